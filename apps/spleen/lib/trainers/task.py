"""What the app's three trainers share: a MONAI Label `BasicTrainTask` that trains on the datastore's
final labels plus the project's phantoms, `steps_per_epoch` draws per epoch, and reports its run.

`monailabel start_server --app apps/spleen` (POST /train/<model>), our server (`app.train(request)`) and
`aiaa train <model>` all run this code. BasicTrainTask's own machinery is kept: SupervisedTrainer and
SupervisedEvaluator, its key-metric CheckpointSaver (`<run>/model.pt`, the best validation Dice) and
PublishStatsAndModel (copies it to `model/<name>.pt` and writes `train_stats.json` every epoch). Added here:

- a baseline validation of the starting weights before the first step, so `model.pt` is never worse
  than what training started from and a caller can refuse weights whose Dice dropped;
- resume: the full state (weights, optimiser, schedule, epoch, run record) after every epoch in
  `<run>/resume_checkpoint_epoch=N.pt`, reloaded by the next sitting (removed once the run finishes);
- `time_limit_s`: end a sitting after the epoch that passes it;
- `publish: false` in the request: keep the new weights in the run folder (our server installs them
  as a new version itself, through its registry).
"""

from __future__ import annotations

import glob
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler, from_engine
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, EnsureTyped
from monai.utils import set_determinism
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from .data import datastore_items

RESUME_PREFIX = "resume"
KEY_METRIC_FILE = "model.pt"  # BasicTrainTask's default: the best validation Dice's weights in the run folder

# MONAI Label shows list values of a trainer's config as a choice and sends the whole list when the client
# does not choose; these keys take the list's first entry.
CHOICE_KEYS = ("device", "dataset", "dataloader", "tracking", "gpus")


REPORT_KEYS = ("best_val_dice", "best_epoch", "baseline_val_dice", "epochs", "seconds", "finished", "weights")


def run_folder(weights: Path | str) -> str:
    """Where a trainer publishing to `weights` keeps its runs: model/<name>.pt → model/<name>/ (MONAI
    Label's radiology app does the same); each run in a subfolder named by the request's `name`."""
    weights = Path(weights)
    return str(weights.parent / weights.name.removesuffix(".pt"))


class RunRecord:
    """The run's figures, saved in the resume checkpoint (numbers and lists only: `weights_only` loading)."""

    def __init__(self) -> None:
        self.baseline: float | None = None
        self.history: list[dict[str, float]] = []
        self.losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": -1.0 if self.baseline is None else self.baseline, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = None if state["baseline"] < 0 else float(state["baseline"])
        self.history = list(state["history"])

    @property
    def best(self) -> tuple[float, int]:
        """(best validation Dice, its epoch); epoch 0 is the starting weights."""
        scores = [(self.baseline if self.baseline is not None else -1.0, 0)]
        scores += [(h["val_dice"], int(h["epoch"])) for h in self.history]
        return max(scores, key=lambda s: s[0])


class AppTrainTask(BasicTrainTask):
    """The shared part; a model's trainer gives its network, transforms and training data."""

    defaults: dict[str, Any] = {}  # the model's own request defaults, on top of `common_defaults`
    common_defaults: dict[str, Any] = {
        "max_epochs": 20,
        "steps_per_epoch": 40,
        "seed": 0,
        "learning_rate": 1e-4,  # fine-tuning the served weights (`aiaa train` from scratch: 2e-3)
        "pretrained": True,  # start from the published weights (model/<name>.pt) when they exist
        "resume": True,  # continue an unfinished run of the same name
        "publish": True,  # copy the best weights to model/<name>.pt as they improve (stock MONAI Label)
        "time_limit_s": 0,  # 0: no limit
        "val_split": 0.2,  # share of the datastore's labelled images kept for validation
        "dataset": "CacheDataset",
        "dataloader": "DataLoader",
        "tracking": "None",  # MLflow is not installed (MONAI Label's default turns it on)
    }

    def __init__(self, model_dir: str, network_factory, description: str, **kwargs):
        self._network_factory = network_factory
        self._record = RunRecord()
        self._val_handler_list: list = []
        self._counts: dict[str, int] = {}
        self._publish_to = kwargs.get("publish_path")
        config = {**self.common_defaults, **self.defaults, **kwargs.pop("config", {})}
        kwargs.setdefault("amp", False)  # fp32 as the weights were trained; AMP is a CUDA-only gain
        kwargs.setdefault("key_metric_filename", KEY_METRIC_FILE)
        super().__init__(model_dir, description, config=config, **kwargs)

    # -- training data ---------------------------------------------------------------------------
    def training_data(self, request: dict, labelled: list[dict], rng: np.random.Generator) -> tuple[list, list]:
        """(train, validation) datalists: the project's data plus the datastore's `labelled` training items."""
        raise NotImplementedError

    def pre_process(self, request: dict, datastore: Datastore | None) -> dict:
        set_determinism(int(request["seed"]))
        rng = np.random.default_rng(int(request["seed"]))
        labelled_train, labelled_val = datastore_items(datastore, float(request.get("val_split") or 0.0))
        train, val = self.training_data(request, labelled_train, rng)
        if not train:
            raise ValueError("nothing to train on: no labelled image in the datastore and no phantoms asked for")
        self._counts = {"datastore_train": len(labelled_train), "datastore_val": len(labelled_val)}
        print(f"training on {len(train)} items ({len(labelled_train)} labelled in the datastore), validating on "
              f"{len(val) + len(labelled_val)} ({len(labelled_val)} labelled)", flush=True)  # fmt: skip
        return {"train": train, "val": val + self.validation_items(labelled_val)}

    def validation_items(self, labelled: list[dict]) -> list[dict]:
        """The datastore's validation images as this model validates them (whole volumes by default)."""
        return labelled

    def partition_datalist(self, context: Context, shuffle=False):
        return context.datalist["train"], context.datalist["val"]

    def train_data_loader(self, context: Context, num_workers=0, shuffle=True):
        """`steps_per_epoch` batches per epoch, drawn with replacement (the data set is small, epochs short)."""
        dataset, _ = self._dataset(context, context.train_datalist, is_train=True)
        steps = int(context.request["steps_per_epoch"]) * context.train_batch_size
        generator = torch.Generator().manual_seed(int(context.request["seed"]))
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps, generator=generator)
        collate = {"collate_fn": self.collate_fn()} if self.collate_fn() else {}  # else MONAI's list_data_collate
        return DataLoader(dataset, batch_size=context.train_batch_size, sampler=sampler, num_workers=num_workers,
                          **collate)  # fmt: skip

    def val_data_loader(self, context: Context, num_workers=0):
        dataset, _ = self._dataset(context, context.val_datalist, is_train=False)
        return DataLoader(dataset, batch_size=context.val_batch_size, num_workers=num_workers)

    def collate_fn(self):
        """None: MONAI's own; click trainers keep the samples as a list (their clicks vary in number)."""
        return None

    # -- network, optimiser, loss ----------------------------------------------------------------
    def network(self, context: Context) -> torch.nn.Module:
        return self._network_factory()

    def optimizer(self, context: Context):
        return torch.optim.AdamW(context.network.parameters(), lr=float(context.request["learning_rate"]),
                                 weight_decay=1e-5)  # fmt: skip

    def loss_function(self, context: Context):
        return DiceCELoss(to_onehot_y=True, softmax=True)

    def lr_scheduler_handler(self, context: Context):
        """Cosine over the whole run, stepped every iteration (as the weights were trained)."""
        total = int(context.request["max_epochs"]) * int(context.request["steps_per_epoch"])
        context.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(context.optimizer, T_max=max(1, total))
        return LrScheduleHandler(context.lr_scheduler, print_lr=False, epoch_level=False)

    def train_post_transforms(self, context: Context):
        return [
            EnsureTyped(keys=("pred", "label")),
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=2),
        ]

    def load_path(self, output_dir, pretrained=True):
        """The published weights when `pretrained` (not the run folder's model.pt: a finished run is not
        resumed from its best weights, an unfinished one from its full state, see `resume_path`)."""
        if pretrained and self._load_path and os.path.exists(self._load_path):
            return self._load_path
        return None

    # -- handlers: baseline, record, resume, time limit -----------------------------------------
    def val_handlers(self, context: Context):
        # BasicTrainTask appends its key-metric CheckpointSaver to this very list; kept to prime it on resume.
        self._val_handler_list = super().val_handlers(context) or []
        return self._val_handler_list

    def train_handlers(self, context: Context):
        handlers = super().train_handlers(context)
        resume = self.resume_path(context)
        if resume:
            handlers.append(CheckpointLoader(resume, self.resume_objects(context), strict=True))
        if context.local_rank == 0:
            handlers.append(CheckpointSaver(save_dir=context.output_dir, save_dict=self.resume_objects(context),
                                            file_prefix=RESUME_PREFIX, save_interval=1, n_saved=1))  # fmt: skip
        return handlers

    def resume_objects(self, context: Context) -> dict:
        return {"model": context.network, "optimizer": context.optimizer, "lr_scheduler": context.lr_scheduler,
                "trainer": _TrainerState(context), "record": self._record}  # fmt: skip

    def resume_path(self, context: Context) -> str | None:
        found = sorted(glob.glob(os.path.join(context.output_dir, f"{RESUME_PREFIX}_*.pt")), key=os.path.getmtime)
        return found[-1] if found and context.request.get("resume") else None

    def finalize(self, context: Context):
        # Added before BasicTrainTask's publisher, so train_stats.json follows the run epoch by epoch.
        trainer, evaluator = context.trainer, context.evaluator
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record_loss)
        trainer.add_event_handler(Events.STARTED, self._baseline, context)
        if evaluator is not None:
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation, context)
        limit = float(context.request.get("time_limit_s") or 0)
        if limit > 0:
            trainer.add_event_handler(Events.EPOCH_COMPLETED, _stop_after, context.start_ts + limit)
        self._publish_path = self._publish_to if context.request.get("publish", True) else None
        super().finalize(context)
        if evaluator is not None and context.local_rank == 0:  # after the publisher: add our figures to its file
            evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._write_progress, context)

    def _record_loss(self, engine) -> None:
        self._record.losses.append(float(from_engine(["loss"], first=True)(engine.state.output)))

    def _baseline(self, engine, context: Context) -> None:
        """Validate the starting weights (after the loaders ran); on resume, prime the best-weights saver."""
        if self._record.baseline is not None:
            saver = next((h for h in self._val_handler_list if isinstance(h, CheckpointSaver)), None)
            if saver is not None and saver._key_metric_checkpoint is not None:  # MONAI keeps the ignite one private
                best, _ = self._record.best
                saver._key_metric_checkpoint.load_state_dict({"saved": [(best, KEY_METRIC_FILE)]})
            return
        if context.evaluator is not None:
            context.evaluator.run(0 + 1)  # one pass; its epoch number is the evaluator's, not the trainer's

    def _record_validation(self, evaluator, context: Context) -> None:
        dice = float(evaluator.state.metrics[self.VAL_METRIC_MEAN_DICE])
        epoch = int(context.trainer.state.epoch)
        if self._record.baseline is None or epoch == 0:
            self._record.baseline = dice
            print(f"validation Dice of the starting weights: {dice:.4f}", flush=True)
        else:
            loss = float(np.mean(self._record.losses)) if self._record.losses else float("nan")
            self._record.history.append({"epoch": epoch, "loss": round(loss, 4), "val_dice": round(dice, 4)})
            self._record.losses = []
            print(f"epoch {epoch}/{context.max_epochs}: loss {loss:.4f}  validation Dice {dice:.4f}", flush=True)

    # -- the run ---------------------------------------------------------------------------------
    def __call__(self, request, datastore: Datastore | None = None):
        """Run (MONAI Label's entry point); `datastore` None: the project's data only (`aiaa train`)."""
        return super().__call__(request, datastore)

    def train(self, rank, world_size, request, datalist):
        for key in CHOICE_KEYS:
            if isinstance(request.get(key), list):
                request[key] = request[key][0] if request[key] else None
        self._started = time.time()
        self._record = RunRecord()  # the resume loader fills it when an unfinished run is continued
        stats = super().train(rank, world_size, request, datalist)
        report = self.report(request)
        if report["finished"]:
            for path in glob.glob(os.path.join(self._model_dir, request["name"], f"{RESUME_PREFIX}_*.pt")):
                os.remove(path)
        stats.update(report)
        self._write_stats(stats)
        return stats

    def report(self, request: dict) -> dict:
        """The run's figures: best validation Dice and its epoch (0: the starting weights), the starting
        weights' Dice, per-epoch history, where the best weights are, whether all epochs ran."""
        best, best_epoch = self._record.best
        history = self._record.history
        return {
            "best_val_dice": best,
            "best_epoch": best_epoch,
            "baseline_val_dice": self._record.baseline,
            "epochs": int(request["max_epochs"]),
            "seconds": round(time.time() - self._started, 1),
            "history": history,
            "finished": bool(history) and history[-1]["epoch"] >= int(request["max_epochs"]),
            "weights": os.path.join(self._model_dir, request["name"], KEY_METRIC_FILE),
            "published": self._publish_path,
            **self._counts,
        }

    def _write_progress(self, evaluator, context: Context) -> None:
        """train_stats.json as MONAI Label's publisher wrote it this epoch, plus `report`."""
        if self._stats_path and os.path.exists(self._stats_path):
            with open(self._stats_path) as f:
                stats = json.load(f)
            self._write_stats({**stats, **self.report(context.request), "finished": False})

    def _write_stats(self, stats: dict) -> None:
        if self._stats_path:  # MONAI Label's /info/ train_stats and our server read the run's figures here
            with open(self._stats_path + ".tmp", "w") as f:
                json.dump(stats, f, indent=2, default=str)
            os.replace(self._stats_path + ".tmp", self._stats_path)


class _TrainerState:
    """The trainer engine's epoch and iteration, as a checkpointable object (resolved at save/load time)."""

    def __init__(self, context: Context):
        self.context = context

    def state_dict(self) -> dict:
        return self.context.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.context.trainer.load_state_dict(state)


def _stop_after(engine, deadline: float) -> None:
    """End this sitting after the epoch that passes `deadline` (the resume checkpoint continues it)."""
    if time.time() > deadline and engine.state.epoch < engine.state.max_epochs:
        engine.terminate()
