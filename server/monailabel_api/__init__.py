"""MONAI Label's REST API, served by our server for every model of the registry, under `/monailabel`.

MONAI Label's clients (its 3D Slicer module, OHIF plugin, `monailabel.client.MONAILabelClient`) take
`http://host:port/monailabel` as their server address; the AIAA contract stays at the root (both APIs
have a `PUT /session/`, with different forms).

Why Flask routes and not MONAI Label's FastAPI routers mounted through an ASGI adapter: those routers
reach the app through MONAI Label's process-global `app_instance()` and `monailabel.config.settings`
(our app factory takes its settings in and keeps no globals), spool uploads to disk with no size or
voxel bound, have their own auth (JWT/Keycloak roles) where ours is `server.auth`, run every inference
through MONAI Label's writer (4.1 s to write a 512×512×32 mask, measured, against 0.1 s for ours) and
answer most bad inputs with a 500. So the wire format is MONAI Label's, served by these routes, and the
parts that hold no such assumptions are MONAI Label's own: `LocalDatastore` (the datastore on disk),
its `Random`/`First` active-learning strategies, the registry's `BasicInferTask`s and the app's train
tasks called through MONAI Label's app contract (`TaskConfig.trainer()` → `task(request, datastore)`).
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, current_app

PREFIX = "/monailabel"


def register(app: Flask) -> None:
    """Add the MONAI Label API (and the AIAA-side label endpoint) to the app: its datastore and training
    jobs live in `app.extensions`; nothing is started until a request asks (no thread here)."""
    from .auth_routes import TokenIssuer
    from .auth_routes import bp as auth_bp
    from .datastore import AnnotationStore
    from .datastore_routes import bp as datastore_bp
    from .label_routes import bp as label_bp
    from .routes import bp as main_bp
    from .train_routes import bp as train_bp
    from .training import TrainingJobs

    settings = app.config["SETTINGS"]
    root = Path(settings.datastore_dir)
    app.extensions["aiaa.datastore"] = AnnotationStore(root)
    app.extensions["aiaa.training"] = TrainingJobs(root / ".training", settings)
    app.extensions["aiaa.monailabel_tokens"] = TokenIssuer()
    for blueprint in (main_bp, datastore_bp, train_bp, auth_bp, label_bp):
        app.register_blueprint(blueprint)


def annotation_store():
    return current_app.extensions["aiaa.datastore"]


def training():
    return current_app.extensions["aiaa.training"]
