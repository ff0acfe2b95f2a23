"""The annotation datastore: MONAI Label's own `LocalDatastore` on disk, fed only with checked volumes.

Images and labels come from the network, so nothing reaches `LocalDatastore` as sent: ids and tags are
checked names (they become file names), every upload is decoded by the server's bounded reader
(`server.image_reading.read_image`) and written back as NIfTI by the server; a label must lie on its image's
grid (the same geometry rules as the masks the server returns) and is stored as uint8 on exactly that
grid. `LocalDatastore` keeps an in-memory index it does not lock itself; one lock here serialises every
call (requests run on waitress threads). Its file watcher is off (no thread).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from aiaa_core.volumes import same_grid, to_array

from ..errors import BadRequest, NotFound

logger = logging.getLogger(__name__)

IMAGE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
TAG = re.compile(r"[A-Za-z0-9_-]{1,32}")
SUFFIX = ".nii.gz"
MAX_LABEL_VALUE = 255  # labels are stored as uint8
STRATEGIES = {"random": Random, "first": First}  # MONAI Label's own active-learning strategies


def check_image_id(image_id: str | None) -> str:
    if not image_id or not IMAGE_ID.fullmatch(image_id) or image_id.endswith((".nii", ".nii.gz", ".gz")):
        raise BadRequest(
            "'image' must be an image id of 1 to 128 of the characters A-Z a-z 0-9 _ . - (not starting with a "
            f"dot, not ending in a file extension); got {_shown(image_id)}."
        )
    return image_id


def check_tag(tag: str | None) -> str:
    tag = tag or DefaultLabelTag.FINAL.value
    if not TAG.fullmatch(tag):
        raise BadRequest(f"'tag' must be 1 to 32 of the characters A-Z a-z 0-9 _ -; got {_shown(tag)}.")
    return tag


def _shown(value: str | None) -> str:
    if value is None:
        return "nothing"
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def content_id(image: sitk.Image) -> str:
    """An id derived from the voxels and geometry alone (no file or patient name): saving the same image
    twice names the same datastore entry."""
    digest = hashlib.sha256()
    for part in (image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()):
        digest.update(repr(part).encode())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).tobytes())
    return "img-" + digest.hexdigest()[:20]


class AnnotationStore:
    """Images and clinicians' labels for training, in MONAI Label's local datastore layout."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.RLock()
        self._opened: LocalDatastore | None = None

    @property
    def _store(self) -> LocalDatastore:
        """Opened (and its folders made) on first use, not when the app is built."""
        with self._lock:
            if self._opened is None:
                self._opened = LocalDatastore(str(self.root), extensions=(f"*{SUFFIX}",), auto_reload=False)
            return self._opened

    # ------------------------------------------------------------------------------------------ reading

    def status(self) -> dict:
        with self._lock:
            return self._store.status()

    def json(self) -> dict:
        with self._lock:
            return self._store.json()

    def datalist(self) -> list[dict]:
        """[{image, label}] of the images that have a final label (what training reads)."""
        with self._lock:
            return self._store.datalist()

    def has_image(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._store.list_images()

    def image_path(self, image_id: str) -> Path:
        check_image_id(image_id)
        with self._lock:
            if image_id not in self._store.list_images():
                raise NotFound(f"No image '{image_id}' in the datastore (GET /monailabel/datastore/ lists them).")
            return Path(self._store.get_image_uri(image_id))

    def label_path(self, image_id: str, tag: str) -> Path:
        check_image_id(image_id)
        check_tag(tag)
        with self._lock:
            uri = self._store.get_label_uri(image_id, tag) if image_id in self._store.list_images() else ""
        if not uri or not Path(uri).is_file():
            raise NotFound(f"No label '{tag}' for image '{image_id}' in the datastore.")
        return Path(uri)

    def next_sample(self, strategy: str, client: str | None = None) -> dict:
        """The next unlabelled image by MONAI Label's `random` or `first` strategy ({} when every image has
        a final label); the pick is recorded in the image's info as MONAI Label does."""
        if strategy not in STRATEGIES:
            raise NotFound(f"Unknown strategy {_shown(strategy)}; this server has: {', '.join(STRATEGIES)}.")
        with self._lock:
            picked = STRATEGIES[strategy]()({"strategy": strategy}, self._store)
            if not picked or not picked.get("id"):
                return {}
            image_id = picked["id"]
            info = self._store.get_image_info(image_id)
            chosen = dict(info.get("strategy", {}))
            chosen[strategy] = {"ts": int(time.time()), "client_id": client}
            self._store.update_image_info(image_id, {"strategy": chosen})
            stored = self._store.get_image_info(image_id)
        # MONAI Label answers with the image's server path; the file name is enough (the Slicer module
        # downloads the image through /datastore/image) and tells nothing of the server's disk
        return {**picked, **stored, "id": image_id, "path": Path(stored.get("path", "")).name}

    # ------------------------------------------------------------------------------------------ writing

    def add_image(self, image_id: str, image: sitk.Image, info: dict | None = None) -> str:
        """Store `image` (decoded and checked by the caller) under `image_id`; an existing one is replaced."""
        check_image_id(image_id)
        with tempfile.TemporaryDirectory(prefix="aiaa-datastore-") as tmp:
            path = Path(tmp) / f"{image_id}{SUFFIX}"
            sitk.WriteImage(image, str(path), useCompression=True)
            with self._lock:
                stored = self._store.add_image(image_id, str(path), dict(info or {}))
        logger.info("datastore: image added")
        return stored

    def save_label(self, image_id: str, label: sitk.Image, tag: str, info: dict | None = None) -> str:
        """Store `label` for the stored image, on exactly that image's grid, as uint8."""
        tag = check_tag(tag)
        image_file = self.image_path(image_id)
        reference = sitk.ReadImage(str(image_file))
        if label.GetNumberOfComponentsPerPixel() != 1:
            raise BadRequest("The label must be a single-channel label map (one integer value per voxel).")
        if label.GetDimension() != reference.GetDimension() or not same_grid(label, reference):
            raise BadRequest(
                f"The label is not on the grid of image '{image_id}' (size {list(reference.GetSize())}, spacing "
                f"{[round(s, 4) for s in reference.GetSpacing()]}); export it on the image's own geometry."
            )
        values = to_array(label)
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            raise BadRequest("The label holds non-integer values; send a label map of whole numbers.")
        if values.size and (values.min() < 0 or values.max() > MAX_LABEL_VALUE):
            raise BadRequest(f"Label values must lie in 0..{MAX_LABEL_VALUE}; got {values.min()}..{values.max()}.")
        stored = sitk.Cast(label, sitk.sitkUInt8) if label.GetPixelID() != sitk.sitkUInt8 else label
        stored.CopyInformation(reference)
        with tempfile.TemporaryDirectory(prefix="aiaa-datastore-") as tmp:
            path = Path(tmp) / f"{image_id}{SUFFIX}"
            sitk.WriteImage(stored, str(path), useCompression=True)
            with self._lock:
                label_id = self._store.save_label(image_id, str(path), tag, dict(info or {}))
        logger.info("datastore: label saved (tag %s)", tag)
        return label_id

    def remove_image(self, image_id: str) -> None:
        self.image_path(image_id)  # 404 when absent
        with self._lock:
            self._store.remove_image(image_id)

    def remove_label(self, image_id: str, tag: str) -> None:
        self.label_path(image_id, tag)  # 404 when absent
        with self._lock:
            self._store.remove_label(image_id, tag)
