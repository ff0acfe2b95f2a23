"""`bench/accuracy.py --studies DATASTORE`: the real-CT benchmark on many patients. A TotalSegmentator-format
dataset imported with `aiaa import-totalseg` is evaluated subject by subject with the same simulated user;
its large organs are found by structure name (their values differ from the shared scans' class map), the
other structures are not scored, and the recorded results of `../shared/data` are left as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import REPO_ROOT
from test_totalseg_import import write_subject

from aiaa_core.phantoms import LABELS, make_phantom
from lib.trainers.totalseg_import import import_totalsegmentator

RESULTS = REPO_ROOT / "bench" / "results"


def run_accuracy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench/accuracy.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


def test_studies_evaluates_every_subject_of_a_datastore(tmp_path):
    source, datastore = tmp_path / "totalseg", tmp_path / "store"
    subjects = {"s0101": (300_101, "RAS"), "s0102": (300_102, "LPS")}
    for name, (seed, orientation) in subjects.items():
        phantom = make_phantom(seed, size=(112, 96, 64), spacing=(3.0, 3.0, 3.0), orientation=orientation)
        labels = sitk.GetArrayFromImage(phantom.label)
        masks = {organ: labels == LABELS[organ] for organ in ("spleen", "liver", "kidney_left", "aorta")}
        write_subject(source, name, phantom.image, masks)
    import_totalsegmentator(source, datastore)
    values = json.loads((datastore / "totalseg_labels.json").read_text())["labels"]
    assert values["spleen"] == 1 and values["liver"] != 5  # not the shared scans' class map (liver 5)
    recorded = {path.name: path.read_bytes() for path in RESULTS.glob("accuracy.*")}

    out = tmp_path / "rows.json"
    args = ["--studies", str(datastore), "--models", "extreme_points", "--variants", "original", "--phantoms", "0"]
    done = run_accuracy(*args, "--json", str(out))

    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    scored = {(r["source"], r["organ"]) for r in rows}
    organs = {"spleen", "liver", "kidney_left"}  # aorta is not a large organ; kidney_right has no mask here
    assert scored == {(subject, organ) for subject in subjects for organ in organs}
    assert all(r["variant"] == "original" for r in rows)
    assert min(r["extreme_points"] for r in rows) >= 0.75, rows  # the organs' own masks, not another label's
    assert f"label maps of the datastore `{datastore}`" in done.stdout and "2 subjects" in done.stdout
    assert {path.name: path.read_bytes() for path in RESULTS.glob("accuracy.*")} == recorded


def test_studies_needs_a_datastore_written_by_the_importer(tmp_path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    image = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16))
    sitk.WriteImage(image, str(tmp_path / "s1.nii.gz"))
    sitk.WriteImage(image, str(tmp_path / "labels" / "final" / "s1.nii.gz"))

    done = run_accuracy("--studies", str(tmp_path), "--models", "extreme_points", "--phantoms", "0")

    assert done.returncode != 0
    assert "totalseg_labels.json is missing" in done.stderr and "aiaa import-totalseg" in done.stderr
    assert "Traceback" not in done.stderr


def test_studies_with_no_labelled_subject_says_so(tmp_path):
    (tmp_path / "labels" / "final").mkdir(parents=True)
    (tmp_path / "totalseg_labels.json").write_text(json.dumps({"labels": {"spleen": 1}}))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(tmp_path / "s1.nii.gz"))

    done = run_accuracy("--studies", str(tmp_path), "--models", "extreme_points", "--phantoms", "0")

    assert done.returncode != 0
    assert f"no subject of {tmp_path} has both an image and labels/final/<subject>" in done.stderr


def test_shared_scans_are_the_two_patients():
    from bench.accuracy import SHARED_DATA, shared_scans

    scans = {scan.patient: scan for scan in shared_scans(SHARED_DATA)}
    if (SHARED_DATA / "totalseg").is_dir():
        assert set(scans) == {"example_ct", "dicom"}
        assert scans["dicom"].image.is_dir() and scans["example_ct"].organs[5] == "liver"
    assert shared_scans(Path("/nonexistent")) == []


def test_report_separates_organs_the_scan_cuts():
    from bench.accuracy import Row, markdown, reaches_edge

    inside = np.zeros((6, 6, 6), bool)
    inside[1:5, 1:5, 1:5] = True
    cut = inside.copy()
    cut[2, 2, 5] = True  # reaches the last slice
    assert not reaches_edge(inside) and reaches_edge(cut)
    rows = [
        Row("p1", "original", "kidney_left", extreme_points=0.9, deepgrow=[0.5, 0.7], cut=False),
        Row("p1", "original", "liver", extreme_points=0.7, deepgrow=[0.8, 0.9], cut=True),
    ]
    report = markdown(rows, "cmd", [], None)
    assert "Organs held whole by the scan (1 rows: p1 kidney_left): extreme_points 0.900, deepgrow_1 0.500" in report
    assert "Organs cut by the scan's edge (1 rows: p1 liver): extreme_points 0.700, deepgrow_1 0.800" in report
    assert "held whole" not in markdown(rows[:1], "cmd", [], None)  # nothing to separate
