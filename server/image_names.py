"""What an uploaded image's file name tells the server: a safe basename, and the extension that picks the reader.

The reader is chosen from the extension of the client's file name, not the content, so the error for a
broken file can name the format the client meant to send ("Could not read 'ct.nii.gz' as NIfTI ...").
"""

from __future__ import annotations

import os
import re

VOLUME_FORMATS: dict[str, tuple[str, str]] = {
    ".nii.gz": ("NIfTI", "NiftiImageIO"),
    ".nii": ("NIfTI", "NiftiImageIO"),
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".mha": ("MetaImage", "MetaImageIO"),
    ".png": ("PNG", "PNGImageIO"),
    ".jpg": ("JPEG", "JPEGImageIO"),
    ".jpeg": ("JPEG", "JPEGImageIO"),
}
"""Single-file formats: extension -> (format name for messages, ITK ImageIO that must read it)."""

SEND_INSTEAD = (
    "Send a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) file or a DICOM series "
    "(.dcm files or a .zip of them)."
)
"""The end of every message that refuses an upload for its kind: what to send instead."""


def upload_basename(filename: str) -> str:
    """The file name without the client's folders, which may be Windows (`C:\\Users\\dr\\ct.nii.gz`).

    Browsers and the Slicer plugin send the full local path; only the basename carries meaning (its
    extension picks the reader). The result is also safe as a file name in a temp dir: never empty,
    `.` or `..`, no control characters, at most 200 bytes (the extension is kept when shortening).
    """
    name = re.split(r"[\\/]", filename or "")[-1]
    name = re.sub(r"^[A-Za-z]:", "", name)  # drive-relative Windows path "C:ct.nii.gz"
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name.encode()) > 200:
        ext = image_extension(name)
        ext = ext if len(ext.encode()) <= 20 else ""
        stem = name[: len(name) - len(ext)] if ext else name
        while len((stem + ext).encode()) > 200:
            stem = stem[:-1]
        name = stem + ext
    return name


def image_extension(filename: str) -> str:
    """Lower-case extension of the basename, with `.nii.gz` kept whole; `""` when there is none."""
    base = re.split(r"[\\/]", filename or "")[-1].lower()
    if base.endswith(".nii.gz") and len(base) > len(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(base)[1]


def unsupported_message(ext: str, name: str) -> str:
    """Why an upload of this extension is refused, and what to send instead."""
    what = f"Unsupported file type '{ext}'." if ext else f"Unsupported file type: '{name}' has no extension."
    return f"{what} {SEND_INSTEAD} 2D models also take .png and .jpg pictures."
