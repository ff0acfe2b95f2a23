"""One module per model; `load_configs` builds them all, for main.py and for our server alike."""

from __future__ import annotations

from monailabel.interfaces.config import TaskConfig

from .deepgrow_3d import DeepGrow3DConfig
from .extreme_points import ExtremePointsConfig
from .segmentation_spleen import SegmentationSpleenConfig

CONFIGS: dict[str, type[TaskConfig]] = {
    "segmentation_spleen": SegmentationSpleenConfig,
    "deepgrow_3d": DeepGrow3DConfig,
    "extreme_points": ExtremePointsConfig,
}


def model_names(models: str = "all") -> list[str]:
    """The model names that `models` selects: "all", or names separated by commas (MONAI Label's `--conf
    models`); the one parser of that list, for main.py and for our server alike. Unknown names: ValueError."""
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    if wanted == ["all"]:
        return list(CONFIGS)
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}; this app has {sorted(CONFIGS)}")
    return wanted


def load_configs(model_dir: str, conf: dict[str, str] | None = None) -> dict[str, TaskConfig]:
    """Initialise every model config (all, or those named in conf['models'], comma separated)."""
    conf = conf or {}
    names = model_names(conf.get("models", "all"))
    configs = {}
    for name in names:
        config = CONFIGS[name]()
        config.init(name, model_dir, conf, None)
        configs[name] = config
    return configs
