"""`/info/` as MONAI Label's `MONAILabelApp.info()` shapes it, for every served model of the registry."""

from __future__ import annotations

from flask import Flask

from .. import __version__


def model_info(model) -> dict:
    """One model as MONAI Label's `InferTask.info()` describes it (type, labels, dimension, description,
    config), plus what `/v1/models` says of it (source, version, engine) for the curious."""
    described = model.info()
    return {
        "type": described["type"],
        "labels": {name: index + 1 for index, name in enumerate(described["labels"])},
        "dimension": described["dimension"],
        "description": described["description"],
        "config": {},
        "source": described["source"],
        "version": described["version"],
        "engine": described.get("engine"),
    }


def app_info(app: Flask) -> dict:
    registry = app.extensions["aiaa.registry"]
    store = app.extensions["aiaa.datastore"]
    training = app.extensions["aiaa.training"]
    models = {m.name: model_info(m) for m in sorted(registry.list(), key=lambda m: m.name)}
    labels: list[str] = []
    for described in models.values():
        labels += [name for name in described["labels"] if name not in labels]
    return {
        "name": "AIAA server (MONAI Label API)",
        "description": "Every model of this server: the app's, uploaded MMARs and bundles",
        "version": __version__,
        "labels": labels,
        "models": models,
        "trainers": training.trainers_info(registry),
        "strategies": {
            "random": {"description": "Random unlabelled image (least recently offered first)"},
            "first": {"description": "First unlabelled image by id"},
        },
        "scoring": {},
        "train_stats": training.stats(),
        "datastore": store.status(),
    }
