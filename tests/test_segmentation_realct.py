"""segmentation_spleen on the real contrast CT of ../shared/data (DICOM series) and its variants, run as the
server runs it: thick slices, ±80 HU (a spleen at ~160 HU, as in a portal-venous scan), flipped axes and an
oblique grid, the variants of `bench/accuracy.py` (the one place they are made).

The shipped weights never saw a real CT, so these are held-out figures. The unenhanced `example_ct` is not
asserted, because it does not hold yet (Dice 0.000: apps/spleen/README.md, "segmentation_spleen on real CT").
"""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from bench.accuracy import Variant, evaluate_segmentation, real_cases
from server.registry import load_app_models

pytestmark = pytest.mark.realdata

SPLEEN = 1  # TotalSegmentator's value
# What the shipped weights reach (bench/results/accuracy.md, 2026-12-02 21:57: 0.855, 0.857, 0.812, 0.690,
# 0.871, 0.855, 0.786) minus a margin; the phantom-only weights before issue 13 scored 0.000 at +80 HU, and
# the oblique grid scored 0.000 before the plausible-component step (a larger false positive was kept).
MIN_DICE = {
    Variant.ORIGINAL: 0.82,
    Variant.SLICES_5MM: 0.82,
    Variant.SLICES_7_5MM: 0.78,
    Variant.PLUS_80HU: 0.62,
    Variant.MINUS_80HU: 0.82,
    Variant.FLIPPED: 0.82,
    Variant.OBLIQUE: 0.74,
}


@pytest.fixture(scope="module")
def model():
    return load_app_models(REPO_ROOT / "apps" / "spleen", "segmentation_spleen")[0]


@pytest.fixture(scope="module")
def dicom_cases(shared_data):
    return {case.variant: case for case in real_cases(shared_data, tuple(MIN_DICE), patients=["dicom"])}


@pytest.mark.parametrize("variant", list(MIN_DICE), ids=str)
def test_spleen_of_the_real_contrast_ct(model, dicom_cases, variant):
    case = dicom_cases[variant]
    truth = case.labels == SPLEEN
    assert truth.sum() > 0, f"{variant}: no spleen in the truth"
    score = evaluate_segmentation(model, case.image, truth)
    assert score >= MIN_DICE[variant], f"{variant}: Dice {score:.3f}"
