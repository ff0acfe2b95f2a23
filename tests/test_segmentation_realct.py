"""segmentation_spleen on the real contrast CT of ../shared/data (DICOM series) and its variants, run as the
server runs it: thick slices, ±80 HU (a spleen at ~160 HU, as in a portal-venous scan) and flipped axes.

The shipped weights never saw a real CT, so these are held-out figures. Not asserted, because they do not
hold yet (apps/spleen/README.md, "segmentation_spleen on real CT"): the unenhanced `example_ct` (Dice 0.000)
and the oblique DICOM variant (a false positive larger than the spleen is kept).
"""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from bench.seg_realct import evaluate, real_scans, variant
from server.registry import load_app_models

pytestmark = pytest.mark.realdata

# What the shipped weights reach (README table) minus a margin; the phantom-only weights before issue 13
# scored 0.758, 0.767 and 0.000 on the original, 7.5 mm and +80 HU cases.
MIN_DICE = {"original": 0.82, "5mm": 0.82, "7.5mm": 0.78, "+80HU": 0.62, "-80HU": 0.82, "LPS": 0.82}


@pytest.fixture(scope="module")
def model():
    return load_app_models(REPO_ROOT / "apps" / "spleen", "segmentation_spleen")[0]


@pytest.fixture(scope="module")
def dicom(shared_data):
    found = {name: (image, truth) for name, image, truth in real_scans(shared_data)}
    return found["example_ct_dicom"]


@pytest.mark.parametrize("kind", list(MIN_DICE))
def test_spleen_of_the_real_contrast_ct(model, dicom, kind):
    image, truth = variant(*dicom, kind)
    score, _, voxels = evaluate(model, image, truth)
    assert voxels > 0, f"{kind}: empty mask"
    assert score >= MIN_DICE[kind], f"{kind}: Dice {score:.3f}"
