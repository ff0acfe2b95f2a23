"""MONAI Label apps; installed from the wheel as the package `aiaa_apps` (see setup.py).

Each app folder (`spleen/`: `main.py`, `lib/`, `model/*.pt`) is package data, not a subpackage: an app's
`lib` imports itself as `lib.*`, so it is loaded only through the server's app loader (server/app_loader.py).
"""
