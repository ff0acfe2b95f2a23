"""`aiaa import-totalseg`: a TotalSegmentator-format dataset (one binary mask file per structure) becomes a
MONAI Label datastore that the trainers read: one label map per subject on its CT's grid, spleen 1 in every
subject, the other structures the same value everywhere, masks on another grid resampled, overlaps kept by
the lower value, a rerun skips what is there, and the click trainers' object pool finds every structure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO_ROOT
from monailabel.datastore.local import LocalDatastore

from aiaa_core.phantoms import LABELS, make_phantom
from lib.trainers.interactive import ObjectPool
from lib.trainers.totalseg_import import LABELS_FILE, import_totalsegmentator
from server.cli import main

SHARED = REPO_ROOT.parent / "shared" / "data" / "totalseg"
APP_DIR = REPO_ROOT / "apps" / "spleen"


def write_subject(root: Path, name: str, ct: sitk.Image, masks: dict[str, np.ndarray]) -> None:
    """One subject as the TotalSegmentator dataset ships it; `masks` in sitk's [k, j, i] array order."""
    (root / name / "segmentations").mkdir(parents=True)
    sitk.WriteImage(ct, str(root / name / "ct.nii.gz"))
    for structure, mask in masks.items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(ct)
        sitk.WriteImage(image, str(root / name / "segmentations" / f"{structure}.nii.gz"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    """Two subjects: a phantom (liver, spleen, an overlapping 'spleen_rim', a mask on a flipped grid) and,
    when ../shared/data is present, the real example CT with three of its TotalSegmentator structures."""
    root = tmp_path_factory.mktemp("totalseg")
    phantom = make_phantom(300_001, size=(72, 64, 40), spacing=(5.0, 5.0, 6.0))
    labels = sitk.GetArrayFromImage(phantom.label)
    spleen = labels == LABELS["spleen"]
    rim = np.zeros_like(spleen)
    rim[:, :, 1:] = spleen[:, :, :-1]  # overlaps the spleen except one voxel layer
    masks = {"spleen": spleen, "liver": labels == LABELS["liver"], "spleen_rim": rim}
    write_subject(root, "s0001", phantom.image, masks)
    flipped = sitk.Flip(sitk.Cast(phantom.label == LABELS["kidney_left"], sitk.sitkUInt8), [True, False, False])
    sitk.WriteImage(flipped, str(root / "s0001" / "segmentations" / "kidney_left.nii.gz"))  # same voxels, other grid
    truth = {"s0001": {**masks, "kidney_left": labels == LABELS["kidney_left"]}}
    if (SHARED / "example_ct.nii.gz").is_file():
        ct = sitk.ReadImage(str(SHARED / "example_ct.nii.gz"))
        real = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED / "example_seg_fast_force_split.nii.gz")))
        truth["s0002"] = {"spleen": real == 1, "liver": real == 5, "kidney_right": real == 2}
        write_subject(root, "s0002", ct, truth["s0002"])
    (root / "not_a_subject").mkdir()
    (root / "meta.csv").write_text("image_id;age;split\ns0001;60;train\ns0002;55;test\n")
    return root, truth


def test_import_writes_one_label_map_per_subject(dataset, tmp_path, capsys):
    source, truth = dataset
    store = tmp_path / "studies"
    main(["import-totalseg", str(source), str(store), "--app-dir", str(APP_DIR)])
    assert f"{len(truth)} subjects imported, 0 already there" in capsys.readouterr().out
    values = json.loads((store / LABELS_FILE).read_text())["labels"]
    assert values["spleen"] == 1
    assert sorted(values.values()) == list(range(1, len(values) + 1))
    datalist = LocalDatastore(str(store), auto_reload=False).datalist()
    assert sorted(Path(d["image"]).name for d in datalist) == [f"{s}.nii.gz" for s in sorted(truth)]
    for item in datalist:
        subject = Path(item["image"]).name.removesuffix(".nii.gz")
        ct = sitk.ReadImage(str(source / subject / "ct.nii.gz"))
        label_image = sitk.ReadImage(item["label"])
        assert label_image.GetSize() == ct.GetSize()
        assert np.allclose(label_image.GetDirection(), ct.GetDirection())
        assert np.allclose(label_image.GetOrigin(), ct.GetOrigin())
        label = sitk.GetArrayFromImage(label_image)
        for structure, expected in kept_voxels(truth[subject], values).items():
            assert np.array_equal(label == values[structure], expected), structure
        assert (label > 0).sum() == np.logical_or.reduce(list(truth[subject].values())).sum()


def kept_voxels(masks: dict[str, np.ndarray], values: dict[str, int]) -> dict[str, np.ndarray]:
    """Each structure's voxels in the label map: a voxel two masks claim goes to the lower value."""
    kept, taken = {}, None
    for name in sorted(masks, key=values.get):
        kept[name] = masks[name] if taken is None else masks[name] & ~taken
        taken = masks[name] if taken is None else taken | masks[name]
    return kept


def test_a_rerun_skips_what_is_there_and_keeps_the_values(dataset, tmp_path):
    source, truth = dataset
    store = tmp_path / "studies"
    first = import_totalsegmentator(source, store, structures=["liver", "spleen"], limit=1)
    assert first.imported == ["s0001"] and set(first.labels) == {"spleen", "liver"}
    written = (store / "labels" / "final" / "s0001.nii.gz").stat().st_mtime_ns
    second = import_totalsegmentator(source, store)
    assert second.already_there == ["s0001"] and second.imported == sorted(truth)[1:]
    assert (second.labels["spleen"], second.labels["liver"]) == (1, 2)  # the first import's values stay
    assert (store / "labels" / "final" / "s0001.nii.gz").stat().st_mtime_ns == written


def test_split_and_refusals(dataset, tmp_path):
    source, _ = dataset
    report = import_totalsegmentator(source, tmp_path / "train", split="train")
    assert report.imported == ["s0001"]
    with pytest.raises(ValueError, match="no subject folders"):
        import_totalsegmentator(source / "not_a_subject", tmp_path / "none")
    with pytest.raises(ValueError, match="none of the structures"):
        import_totalsegmentator(source, tmp_path / "none", structures=["brain"])
    with pytest.raises(SystemExit, match="needs"):
        main(["import-totalseg", str(source / "s0001"), str(tmp_path / "x"), "--split", "train",
              "--app-dir", str(APP_DIR)])  # fmt: skip


def test_the_click_trainers_find_every_imported_structure(dataset, tmp_path):
    source, truth = dataset
    store = tmp_path / "studies"
    report = import_totalsegmentator(source, store)
    datalist = LocalDatastore(str(store), auto_reload=False).datalist()
    pool = ObjectPool(0, num_train=0, num_val=1, shared_data=None, labelled=datalist)
    found = {(Path(pool.items[o.item]["image"].meta["filename_or_obj"]).name, o.value) for o in pool.objects}
    expected = {
        (f"{subject}.nii.gz", report.labels[structure])
        for subject, masks in truth.items()
        for structure, kept in kept_voxels(masks, report.labels).items()
        if kept.sum() >= 300  # the pool's smallest object
    }
    assert len(expected) >= 4
    assert found == expected
