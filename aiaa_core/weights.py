"""State dicts loaded without ever running code from the file: `torch.load(weights_only=True)`.

The app's exporter (its own `.pt` files) and the server's model formats (uploaded ones) load state dicts this
one way; the server adds its TorchScript and ONNX checks (`server/model_formats/weights.py`) and answers a
refusal with a 400.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

__all__ = ["CHECKPOINT_KEYS", "WeightsRefused", "load_state_dict"]

CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")  # MONAI Label / Ignite checkpoint layouts


class WeightsRefused(ValueError):
    """Not a plain state dict: a pickle that would call code, a corrupt file, or not a name → tensor mapping."""


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: only tensors and plain containers are unpickled, nothing is called."""
    path = Path(path)
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).strip().splitlines()[0][:200]
        raise WeightsRefused(f"models/{path.name} was refused: it is not a plain weights file ({detail}).") from None
    except Exception as error:  # noqa: BLE001 - corrupt or truncated files
        raise WeightsRefused(f"models/{path.name} is not a readable PyTorch checkpoint: {error}") from None
    if isinstance(checkpoint, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsRefused(f"models/{path.name} does not hold a state dict (name → tensor).")
    return checkpoint
