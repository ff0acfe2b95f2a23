"""`aiaa`: serve the API (server/serve_command.py), train and export the app's models, write phantoms, import a
TotalSegmentator-format dataset to train on, manage the model repository (server/admin_client.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiaa_core.vocabularies import UPLOAD_FORMATS, ModelFormat

from . import admin_client
from .serve_command import add_serve_arguments, serve
from .settings import Settings

logger = logging.getLogger("aiaa")


def train(args: argparse.Namespace) -> None:
    """Train one of the app's models with its MONAI Label train task (the code MONAI Label's /train/ runs)
    and publish the best weights to the app's model folder (or --output); runs in --output without `.pt`."""
    from .app_loader import app_configs

    app_dir = Path(args.app_dir).resolve()
    configs = app_configs(app_dir)
    if args.model not in configs.CONFIGS:
        raise SystemExit(f"unknown model '{args.model}'; trainable: {', '.join(configs.CONFIGS)}")
    config = configs.load_configs(str(app_dir / "model"), {"models": args.model})[args.model]
    output = Path(args.output).resolve() if args.output else Path(config.path)
    options = {}
    if args.data:
        if args.model != "segmentation_spleen":
            raise SystemExit("--data (an MSD Task09 folder) trains segmentation_spleen only")
        options["data_dir"] = args.data
    trainer = config.trainer(publish_path=str(output), **options)
    datastore = None
    if args.studies:
        from monailabel.datastore.local import LocalDatastore

        datastore = LocalDatastore(str(Path(args.studies).resolve()), auto_reload=False)
    logging.basicConfig(level=logging.WARNING)
    # From scratch at the rate the committed weights were trained with (MONAI Label's /train/ fine-tunes).
    request = {"max_epochs": args.epochs, "steps_per_epoch": args.steps, "seed": args.seed}
    report = trainer({**request, "pretrained": False, "learning_rate": args.lr}, datastore)
    print(
        f"best validation Dice {report['best_val_dice']:.4f} (epoch {report['best_epoch']}; 0: the starting "
        f"weights) after {report['epochs']} epochs in {report['seconds']} s -> {output}"
    )


def phantom(args: argparse.Namespace) -> None:
    """Write a synthetic CT phantom (image + label) for trying the server out."""
    from aiaa_core.phantoms import make_phantom, write_phantom

    ph = make_phantom(args.seed, size=tuple(args.size), spacing=tuple(args.spacing), orientation=args.orientation)
    image, label = write_phantom(ph, Path(args.out), stem=f"phantom{args.seed}", extension=args.format)
    print(f"{image}\n{label}")


def export(args: argparse.Namespace) -> None:
    """Export one of the app's models as an MMAR (v4 config + TorchScript) or MONAI bundle zip."""
    from .app_loader import import_app_module

    app_dir = Path(args.app_dir).resolve()
    export_model = import_app_module(app_dir, "lib.export").export_model

    for fmt in args.format:
        print(export_model(app_dir, args.model, fmt, Path(args.out)))


def import_totalseg(args: argparse.Namespace) -> None:
    """Write a TotalSegmentator-format dataset into a datastore folder that `aiaa train --studies` reads."""
    from .app_loader import import_app_module

    module = import_app_module(Path(args.app_dir).resolve(), "lib.trainers.totalseg_import")
    structures = [s.strip() for s in args.structures.split(",") if s.strip()] if args.structures else None
    try:
        report = module.import_totalsegmentator(
            Path(args.source), Path(args.datastore), structures=structures, split=args.split, limit=args.limit
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(
        f"{len(report.imported)} subjects imported, {len(report.already_there)} already there; "
        f"{len(report.labels)} structures (values in {Path(args.datastore) / module.LABELS_FILE}); "
        f"{report.overlapping_voxels} voxels claimed by two masks (kept by the lower value)"
    )


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    top = argparse.ArgumentParser(prog="aiaa", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="serve the AIAA API")
    add_serve_arguments(p, defaults)
    p.set_defaults(func=serve)

    p = commands.add_parser("train", help="train one of the app's models")
    p.add_argument("model")
    p.add_argument("--data", type=Path, help="MSD Task09-style folder (default: synthetic phantoms)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine; lower for a warm start)")
    p.add_argument("--output", help="weights file (default: the app's model folder)")
    p.add_argument("--studies", help="also train on this MONAI Label datastore's final labels")
    p.add_argument("--app-dir", default=str(defaults.app_dir))
    p.set_defaults(func=train)

    admin_client.add_parser(commands)

    p = commands.add_parser("phantom", help="write a synthetic CT phantom and its labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=3, default=(112, 96, 64))
    p.add_argument("--spacing", type=float, nargs=3, default=(3.0, 3.0, 3.0))
    p.add_argument("--orientation", default="RAS")
    p.add_argument("--format", default=".nii.gz", choices=(".nii.gz", ".nii", ".nrrd", ".mha"))
    p.add_argument("--out", default=".")
    p.set_defaults(func=phantom)

    p = commands.add_parser("export", help="export one of the app's models as an MMAR or MONAI bundle zip")
    p.add_argument("model")
    p.add_argument("--format", nargs="+", choices=UPLOAD_FORMATS, default=[ModelFormat.MMAR], help="one or both")
    p.add_argument("--out", default=".", help="folder for <model>-<format>.zip")
    p.add_argument("--app-dir", default=str(defaults.app_dir))
    p.set_defaults(func=export)

    p = commands.add_parser(
        "import-totalseg", help="a TotalSegmentator-format dataset as a datastore to train on (--studies)"
    )
    p.add_argument("source", help="folder of subjects: <subject>/ct.nii.gz and <subject>/segmentations/*.nii.gz")
    p.add_argument("datastore", help="datastore folder to write (created; subjects already there are skipped)")
    p.add_argument("--structures", help="comma-separated structure names (default: every mask found)")
    p.add_argument("--split", help="only the subjects of this meta.csv split (train, val, test)")
    p.add_argument("--limit", type=int, help="at most this many subjects (name order)")
    p.add_argument("--app-dir", default=str(defaults.app_dir))
    p.set_defaults(func=import_totalseg)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
