"""The one training loop the app's trainers share: steps, validation Dice each epoch, best checkpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

logger = logging.getLogger(__name__)

# next_batch(network) -> (inputs, targets); gets the network so click simulation can run it
BatchFn = Callable[[torch.nn.Module], tuple[torch.Tensor, torch.Tensor]]


def fit(
    network: torch.nn.Module,
    next_batch: BatchFn,
    validate: Callable[[torch.nn.Module], float],
    model_path: Path,
    *,
    epochs: int,
    steps_per_epoch: int,
    learning_rate: float = 2e-3,
    checkpoint: Path | None = None,
    time_limit_s: float | None = None,
) -> dict:
    """Train with Dice+CE on 2-class logits; keep the weights of the best validation Dice at `model_path`.

    With `checkpoint`, the whole state (weights, optimiser, schedule, best score, history) is saved there
    after every epoch and a run resumes from it, so a long training spans several sittings; `time_limit_s`
    ends this sitting after the first epoch that passes it (the report then has `"finished": False`).
    """
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    best, history, started, first = -1.0, [], time.time(), 1
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=True)  # tensors, numbers, lists and dicts only
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best, history, first = state["best"], state["history"], state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {checkpoint} after epoch {state['epoch']} (best validation Dice {best:.4f})", flush=True)
    finished = True
    for epoch in range(first, epochs + 1):
        losses = []
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", leave=False):
            inputs, targets = next_batch(network)
            network.train()
            optimizer.zero_grad()
            loss = loss_fn(network(inputs), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        network.eval()
        with torch.no_grad():
            dice = float(validate(network))
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "val_dice": round(dice, 4)})
        print(f"epoch {epoch}/{epochs}: loss {np.mean(losses):.4f}  validation Dice {dice:.4f}", flush=True)
        if dice > best:
            best = dice
            torch.save(network.state_dict(), model_path)
        if checkpoint is not None:
            state = {"network": network.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "scheduler": scheduler.state_dict(), "best": best, "history": history,
                     "torch_rng": torch.get_rng_state()}  # fmt: skip
            torch.save(state, checkpoint.with_suffix(".tmp"))
            checkpoint.with_suffix(".tmp").replace(checkpoint)
        if time_limit_s is not None and time.time() - started > time_limit_s and epoch < epochs:
            finished = False
            break
    return {
        "best_val_dice": best,
        "epochs": epochs,
        "seconds": round(time.time() - started, 1),
        "history": history,
        "finished": finished,
    }


def dice_score(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Dice of argmax(logits) (B, 2, ...) against a binary target (B, 1, ...)."""
    pred = logits.argmax(1) > 0
    truth = target[:, 0] > 0
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * (pred & truth).sum() / total)
