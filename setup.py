"""The one packaging fact setup.cfg cannot state: the wheel ships `apps/` as the package `aiaa_apps`.

Everything else (metadata, dependencies, package data, entry points) is in setup.cfg. `aiaa_apps/spleen` is
the MONAI Label app served by default when the project is installed from a wheel
(`server.app_loader.default_app_dir`); in a checkout the app is read from `apps/spleen` itself.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["server", "server.*", "aiaa_core", "aiaa_core.*"]), "aiaa_apps"],
    package_dir={"aiaa_apps": "apps"},
)
