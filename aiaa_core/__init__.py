"""The Flask-free core that the MONAI Label app and the server share.

Engines, request and data keys, the shared transforms, mask geometry, phantoms and image hand-off to
MONAI live here; the app (`apps/spleen`) and the server (`server/`) both import from it and never
from each other.
"""

__version__ = "0.1.0"  # the project's one version: the wheel (setup.cfg), the server and the app's exports
