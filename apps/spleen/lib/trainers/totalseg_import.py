"""Many real patients for the trainers: a TotalSegmentator-format dataset as a MONAI Label datastore.

The real-CT gap of issue 13 needs many labelled patients; the TotalSegmentator dataset (Wasserthal et al.
2023, 1228 CTs, 117 structures, CC-BY 4.0, Zenodo 10047292) has them, one folder per subject:
`<subject>/ct.nii.gz` and `<subject>/segmentations/<structure>.nii.gz` (one binary mask per structure), and a
`meta.csv` (`;`-separated, with a `split` column: train / val / test). The app's three trainers already read
a datastore's final labels (`aiaa train <model> --studies DIR`, MONAI Label's /train/): this writes each
subject as `<subject>.nii.gz` and one label map `labels/final/<subject>.nii.gz` on the CT's grid. The
values are the same in every subject, written to `totalseg_labels.json`: spleen is 1 (what
`segmentation_spleen` trains on), the other structures 2, 3, ... in name order; the click models treat
every value as an object. Where masks overlap the lower value keeps the voxel.

Subjects already imported are skipped (a long import can be resumed); each file is written under a
temporary name and renamed, so a datastore never lists half a subject.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from aiaa_core.volumes import same_grid

CT_FILE = "ct.nii.gz"
MASKS_DIR = "segmentations"
META_FILE = "meta.csv"
LABELS_FILE = "totalseg_labels.json"
FIRST = "spleen"  # value 1: the label `segmentation_spleen` trains on
SUFFIX = ".nii.gz"


@dataclass
class ImportReport:
    labels: dict[str, int]
    imported: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    overlapping_voxels: int = 0


def subjects(source: Path, split: str | None = None) -> list[Path]:
    """The subject folders of `source` holding a CT and a segmentations folder (those of `split` in
    meta.csv when asked), in name order."""
    found = sorted(p for p in source.iterdir() if (p / CT_FILE).is_file() and (p / MASKS_DIR).is_dir())
    if split is None:
        return found
    meta = source / META_FILE
    if not meta.is_file():
        raise ValueError(f"--split {split} needs {meta}")
    with meta.open(newline="") as f:
        wanted = {row["image_id"] for row in csv.DictReader(f, delimiter=";") if row.get("split") == split}
    return [p for p in found if p.name in wanted]


def structure_names(folders: Iterable[Path], structures: Iterable[str] | None = None) -> list[str]:
    """Every structure with a mask in any of `folders` (or only `structures`), spleen first, then by name."""
    names = {p.name.removesuffix(SUFFIX) for folder in folders for p in (folder / MASKS_DIR).glob(f"*{SUFFIX}")}
    if structures is not None:
        names &= set(structures)
    return sorted(names, key=lambda n: (n != FIRST, n))


def label_values(datastore: Path, names: list[str]) -> dict[str, int]:
    """The value of each structure: those of an earlier import into `datastore` (kept, so every subject
    agrees), new names after them."""
    path = datastore / LABELS_FILE
    values = json.loads(path.read_text())["labels"] if path.is_file() else {}
    if values and values.get(FIRST, 1) != 1:
        raise ValueError(f"{path}: {FIRST} must be 1")
    for name in names:
        if name not in values:
            values[name] = 1 if name == FIRST else max([1, *values.values()]) + 1
    if max(values.values(), default=0) > np.iinfo(np.uint16).max:
        raise ValueError("more structures than a 16-bit label map holds")
    return values


def label_map(folder: Path, ct: sitk.Image, values: dict[str, int]) -> tuple[sitk.Image, int]:
    """One label map on the CT's grid from the subject's masks (resampled by nearest voxel where a mask's
    grid differs), and the number of voxels claimed by more than one mask."""
    dtype = np.uint8 if max(values.values()) <= np.iinfo(np.uint8).max else np.uint16
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=dtype)
    overlaps = 0
    for name, value in sorted(values.items(), key=lambda item: item[1]):
        path = folder / MASKS_DIR / f"{name}{SUFFIX}"
        if not path.is_file():
            continue
        mask = sitk.ReadImage(str(path))
        if not same_grid(mask, ct):
            mask = sitk.Resample(mask, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        inside = sitk.GetArrayViewFromImage(mask) > 0
        overlaps += int(np.count_nonzero(inside & (labels > 0)))
        labels[inside & (labels == 0)] = value
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image, overlaps


def import_totalsegmentator(
    source: Path,
    datastore: Path,
    *,
    structures: Iterable[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> ImportReport:
    """Write the subjects of `source` (at most `limit`, of `split`) into the datastore folder `datastore`."""
    source, datastore = Path(source), Path(datastore)
    chosen = subjects(source, split)[:limit]
    if not chosen:
        raise ValueError(f"no subject folders with {CT_FILE} and {MASKS_DIR}/ in {source}")
    names = structure_names(chosen, structures)
    if not names:
        raise ValueError("none of the structures asked for has a mask")
    final = datastore / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    values = label_values(datastore, names)
    atomic_write(datastore / LABELS_FILE, lambda tmp: tmp.write_text(json.dumps({"labels": values}, indent=1)))
    report = ImportReport(labels=values)
    for folder in chosen:
        image_path, label_path = datastore / f"{folder.name}{SUFFIX}", final / f"{folder.name}{SUFFIX}"
        if image_path.is_file() and label_path.is_file():
            report.already_there.append(folder.name)
            continue
        ct = sitk.ReadImage(str(folder / CT_FILE))
        labels, overlaps = label_map(folder, ct, {n: values[n] for n in names})
        atomic_write(label_path, lambda tmp, labels=labels: sitk.WriteImage(labels, str(tmp), True))
        atomic_write(image_path, lambda tmp, folder=folder: shutil.copyfile(folder / CT_FILE, tmp))
        report.overlapping_voxels += overlaps
        report.imported.append(folder.name)
    return report


def atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{SUFFIX if path.name.endswith(SUFFIX) else ''}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
