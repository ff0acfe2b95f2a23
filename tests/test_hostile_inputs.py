"""Hostile clients, by class, against a real server process with a small memory budget: every payload gets
its 4xx, no byte of a file outside the upload appears in any reply or log, and the server's peak RSS stays
far below what the payload would have made it allocate.

Classes: file references in image headers (NRRD, MetaImage, NIfTI/Analyze pairs, with every line ending),
memory amplification (grids the pipeline would create, DICOM claimed sizes, decompression), parameters
(params JSON and query values) and sessions. The checks themselves, in process: test_hostile_inputs_in_process.py.
"""

from __future__ import annotations

import gzip
import io
import json
import secrets
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
import SimpleITK as sitk
from aiaa_helpers import parse_result, post
from conftest import start_server, stop_server
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aiaa_core.phantoms import make_phantom, write_phantom
from server.budget import request_limit
from server.errors import BadRequest
from server.image_reading import read_image
from server.params import MAX_PARAMS_BYTES, MAX_POINTS

SECRET = ("AIAA-SECRET-" + secrets.token_hex(8)).encode()
BUDGET_MB = 1536  # with the default 2 + 1 workers: 768 MiB for a segmentation, 384 MiB for a click
PER_REQUEST = request_limit(BUDGET_MB * 2**20, 2, 1, batch=True)  # a segmentation's share (defaults: 2 + 1 workers)
RSS_SLACK = 300 * 2**20  # what refusing may cost (parsing, temp files); every payload below asks for far more
MODEL = "segmentation_spleen"


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, Path]:
    """A file of secret bytes outside any upload, and a path beside it that does not exist."""
    folder = tmp_path_factory.mktemp("outside")
    secret = folder / "secret.raw"
    secret.write_bytes(SECRET * (4096 // len(SECRET) + 1))
    (folder / "secret1.raw").write_bytes(secret.read_bytes())  # for %d patterns
    return {"existing": secret, "missing": folder / "missing.raw", "pattern": folder / "secret%d.raw"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("hostile"), env={"AIAA_MEMORY_BUDGET_MB": str(BUDGET_MB)})
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def phantom_path(tmp_path_factory) -> Path:
    phantom = make_phantom(12, size=(48, 40, 32), spacing=(4.0, 4.0, 4.0))
    return write_phantom(phantom, tmp_path_factory.mktemp("phantom"), stem="ct")[0]


class PeakRss:
    """The server process' peak resident memory over a block (Linux: VmHWM, reset through clear_refs)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __enter__(self) -> PeakRss:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        self.baseline = psutil.Process(self.pid).memory_info().rss
        return self

    def __exit__(self, *exc) -> None:
        status = Path(f"/proc/{self.pid}/status").read_text()
        self.peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) * 1024
        self.growth = self.peak - self.baseline


def assert_refused(reply: requests.Response, status: int, *fragments: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["success"] is False
    for fragment in fragments:
        assert fragment in body["error"]["message"], body
    assert SECRET not in reply.content
    return body["error"]["message"]


def assert_nothing_leaked(server) -> None:
    for log in server.log_dir.iterdir():
        text = log.read_bytes()
        assert SECRET not in text, log
        assert b"Traceback" not in text, log
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def segment(server, name: str, data: bytes, params: dict | None = None, **query) -> requests.Response:
    return post(server.url, "segmentation", MODEL, [("datapoint", (name, data))], params, **query)


def put_session(server, name: str, data: bytes, **query) -> requests.Response:
    return requests.put(f"{server.url}/session/", params=query, files={"image": (name, data)}, timeout=60)


# ------------------------------------------------------------------------------------ file references

EOLS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def nrrd_payloads(target: Path, eol: bytes) -> dict[str, bytes]:
    head = [b"NRRD0004", b"type: uint8", b"dimension: 3", b"sizes: 16 16 16", b"encoding: raw"]
    path = str(target).encode()
    pattern = str(target.parent / "secret%d.raw").encode()
    lines = {
        "data file": [b"data file: " + path],
        "datafile": [b"datafile: " + path],
        "upper case": [b"DATA FILE: " + path],
        "list": [b"data file: LIST", path],
        "pattern": [b"data file: " + pattern + b" 1 1 1"],
        "after key=value": [b"note:=x", b"data file: " + path],
        "proc": [b"data file: /proc/self/environ"],
    }
    return {name: eol.join([*head, *more]) + eol for name, more in lines.items()}


def metaimage_payloads(target: Path, eol: bytes) -> dict[str, bytes]:
    head = [b"ObjectType = Image", b"NDims = 3", b"DimSize = 16 16 16", b"ElementType = MET_UCHAR"]
    path = str(target).encode()
    pattern = str(target.parent / "secret%d.raw").encode()
    lines = {
        "path": [b"ElementDataFile = " + path],
        "colon": [b"ElementDataFile: " + path],
        "list": [b"ElementDataFile = LIST", path],
        "pattern": [b"ElementDataFile = " + pattern + b" 1 1 1"],
        "decoy spelling": [b"elementdatafile = LOCAL", b"ElementDataFile = " + path],
        "decoy after cr": [b"Comment = x\rElementDataFile = LOCAL", b"ElementDataFile = " + path],
    }
    return {name: eol.join([*head, *more]) + eol for name, more in lines.items()}


def analyze_pair() -> bytes:
    """A NIfTI-1 header whose magic says its voxels are in a separate .img file."""
    header = nib.Nifti1Header()
    header.set_data_shape((16, 16, 16))
    header.set_data_dtype(np.uint8)
    header["magic"] = b"ni1"
    return header.binaryblock + bytes(16**3)


def test_read_image_never_follows_a_reference(tmp_path, outside):
    """In process: every spelling, line ending and reference form; existing and missing targets alike."""
    cases = []
    for eol_name, eol in EOLS.items():
        for kind in ("existing", "missing"):
            for name, data in nrrd_payloads(outside[kind], eol).items():
                cases.append((f"nrrd {name} {eol_name} {kind}", "x.nrrd", data))
            for name, data in metaimage_payloads(outside[kind], eol).items():
                cases.append((f"mha {name} {eol_name} {kind}", "x.mha", data))
    cases.append(("nifti pair", "x.nii", analyze_pair()))
    cases.append(("nifti pair gz", "x.nii.gz", gzip.compress(analyze_pair())))
    messages = {}
    for label, filename, data in cases:
        folder = tmp_path / str(len(messages))
        folder.mkdir()
        (folder / filename).write_bytes(data)
        with pytest.raises(BadRequest) as refused:
            read_image([folder / filename])
        assert SECRET.decode() not in refused.value.message, label
        messages[label] = refused.value.message
    for label, message in messages.items():  # no existence oracle: the same answer for both targets
        if label.endswith("existing"):
            assert message == messages[label.replace("existing", "missing")], label
        assert "separate data file" in message or "damaged" in message, (label, message)


@pytest.mark.parametrize("eol", EOLS)
def test_file_references_over_http(server, outside, eol):
    answers = {}
    for kind in ("existing", "missing"):
        payloads = {
            **{f"x{n}.nrrd": d for n, d in enumerate(nrrd_payloads(outside[kind], EOLS[eol]).values())},
            **{f"x{n}.mha": d for n, d in enumerate(metaimage_payloads(outside[kind], EOLS[eol]).values())},
        }
        for filename, data in payloads.items():
            first = segment(server, filename, data)
            second = put_session(server, filename, data)
            assert first.status_code == second.status_code == 400, (filename, first.text, second.text)
            answers[(kind, filename)] = assert_refused(first, 400)
            assert_refused(second, 400)
    for (kind, filename), message in answers.items():
        if kind == "existing":
            assert message == answers[("missing", filename)]
    assert_nothing_leaked(server)


def test_analyze_pair_over_http(server):
    assert_refused(segment(server, "pair.nii", analyze_pair()), 400, "separate data file")
    assert_refused(put_session(server, "pair.nii.gz", gzip.compress(analyze_pair())), 400, "separate data file")


# ---------------------------------------------------------------------------------- geometry


def sheared(extension: str, tmp_path: Path) -> bytes:
    image = sitk.Image([16, 16, 16], sitk.sitkInt16)
    image.SetDirection((1, 0, 0, 0.5, 1, 0, 0, 0, 1))  # ITK stores it; NIfTI's writer would refuse
    path = tmp_path / f"sheared{extension}"
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def test_sheared_images_are_refused_in_every_format(server, tmp_path):
    for extension in (".nrrd", ".mha"):
        message = assert_refused(segment(server, f"ct{extension}", sheared(extension, tmp_path)), 400, "sheared")
        assert "orientation matrix" in message
        assert_refused(put_session(server, f"ct{extension}", sheared(extension, tmp_path)), 400, "sheared")


@pytest.mark.parametrize("spacing", [b"0 1 1", b"-2 1 1"])
def test_degenerate_spacing_is_refused(server, spacing):
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementSpacing = " + spacing
    data = header + b"\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + bytes(64)
    assert_refused(segment(server, "flat.mha", data), 400, "spacing")


def test_absurd_spacing_is_costed_not_crashed(server):
    """A finite spacing whose extent overflows a float still gets a 413, not a 500."""
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementSpacing = 1e308 1e308 1e308"
    data = header + b"\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + bytes(64)
    assert_refused(segment(server, "vast.mha", data), 413, "working grid")


# ----------------------------------------------------------------------------- memory amplification


def nifti_gz(shape, spacing, dtype=np.uint8) -> bytes:
    image = nib.Nifti1Image(np.zeros(shape, dtype), np.diag([*spacing, 1.0]))
    return gzip.compress(image.to_bytes(), compresslevel=1)


def claimed_dicom(rows: int, columns: int, pixel_bytes: int = 64) -> bytes:
    """A 1 KB DICOM file whose Rows and Columns claim far more pixels than it carries."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.PixelData = bytes(pixel_bytes)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    buffer = io.BytesIO()
    ds.save_as(buffer, write_like_original=False)
    return buffer.getvalue()


def channel_bomb() -> bytes:
    """A 4×4×4 MetaImage whose header claims 10⁸ values per voxel (6 GB)."""
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementNumberOfChannels = 100000000\n"
    return header + b"ElementType = MET_UCHAR\nElementDataFile = LOCAL\n" + bytes(64)


def test_amplifying_uploads_are_refused_before_allocation(server):
    big_grid = nifti_gz((16, 16, 16), (100.0, 100.0, 100.0))  # 501³ at the model's 3 mm: 7 GB if run
    big_volume = nifti_gz((512, 512, 512), (1.0, 1.0, 1.0))  # 128 MB decoded, several GB of pipeline
    dicom = claimed_dicom(20000, 20000)  # 800 MB of zeros if read
    with PeakRss(server.process.pid) as rss:
        message = assert_refused(segment(server, "tiny.nii.gz", big_grid), 413, "501×501×501", "working grid")
        assert f"limit is {PER_REQUEST / 2**20:.0f} MiB per request" in message
        assert_refused(segment(server, "cube.nii.gz", big_volume), 413, "512×512×512", "per request")
        assert_refused(segment(server, "claims.dcm", dicom), 400, "fewer pixel bytes")
        assert_refused(segment(server, "channels.mha", channel_bomb()), 413, "4×4×4×100000000")
        assert_refused(put_session(server, "claims.dcm", dicom), 400, "fewer pixel bytes")
        # a session of the tiny volume is fine (4 KB); the segmentation on it is what would not fit
        created = put_session(server, "tiny.nii.gz", big_grid)
        assert created.status_code == 200, created.text
        on_session = post(server.url, "segmentation", MODEL, [], session_id=created.json()["session_id"])
        assert_refused(on_session, 413, "501×501×501")
    assert rss.growth < RSS_SLACK, f"server grew by {rss.growth / 2**20:.0f} MB while refusing"
    assert_nothing_leaked(server)


def test_decompression_bomb_is_refused_from_its_header(server):
    header = b"NRRD0004\ntype: int16\ndimension: 3\nsizes: 1024 1024 400\nendian: little\nencoding: gzip\n\n"
    payload = header + gzip.compress(bytes(4 * 2**20))  # 4 KB claiming 800 MB
    with PeakRss(server.process.pid) as rss:
        assert_refused(segment(server, "bomb.nrrd", payload), 413, "decoded 1024×1024×400 image", "per request")
        assert_refused(put_session(server, "bomb.nrrd", payload), 413, "decoded 1024×1024×400 image")
    assert rss.growth < RSS_SLACK


def test_a_request_within_budget_still_runs(server, phantom_path):
    with PeakRss(server.process.pid) as rss:
        result, _, _ = parse_result(segment(server, phantom_path.name, phantom_path.read_bytes()))
    assert "latencies" in result
    assert rss.growth < PER_REQUEST  # the estimate bounds what the request really took


# ------------------------------------------------------------------------------------------ params

BAD_PARAMS = {
    "deep array": ("[" * 100_000 + "]" * 100_000, "nested"),
    "deep object": ('{"a":' * 50 + "1" + "}" * 50, "nested"),
    "5000 digits": ('{"points": [[' + "9" * 5000 + ", 1, 1]]}", "64 bits"),
    "NaN": ('{"result_compress": NaN}', "finite"),
    "infinity": ('{"x": 1e999}', "not finite"),
    "extension not a string": ('{"result_extension": 5}', "result_extension"),
    "dtype list": ('{"result_dtype": ["uint8"]}', "result_dtype"),
    "compress maybe": ('{"result_compress": "maybe"}', "result_compress"),
    "unknown extension": ('{"result_extension": ".exe"}', "Unsupported mask format"),
    "not an object": ("[1, 2, 3]", "JSON object"),
    "oversize": ('{"pad": "' + "x" * (MAX_PARAMS_BYTES + 10) + '"}', "limit is"),
}


@pytest.mark.parametrize("case", BAD_PARAMS)
def test_bad_params_are_400(server, phantom_path, case):
    raw, fragment = BAD_PARAMS[case]
    files = {"datapoint": (phantom_path.name, phantom_path.read_bytes())}
    reply = requests.post(
        f"{server.url}/v1/segmentation", params={"model": MODEL}, files=files, data={"params": raw}, timeout=60
    )
    assert_refused(reply, 400, fragment)
    assert_nothing_leaked(server)


def test_point_lists_are_bounded(server, phantom_path):
    files = [("datapoint", (phantom_path.name, phantom_path.read_bytes()))]
    many = {"foreground": [[10, 10, 10]] * (MAX_POINTS + 1)}
    assert_refused(post(server.url, "deepgrow", "deepgrow_3d", files, many), 400, f"limit is {MAX_POINTS}")
    million = {"foreground": [[1, 1, 1]] * 1_000_000}  # 10 MB of JSON: refused by the size of the form field
    refused = post(server.url, "deepgrow", "deepgrow_3d", files, million)
    assert_refused(refused, 413, "form field", str(2 * MAX_PARAMS_BYTES))  # not the upload limit: the field's
    in_limits = {"foreground": [[1, 1, 1]] * 100_000}  # 1.1 MB, within the form limits: our own count check
    assert_refused(post(server.url, "deepgrow", "deepgrow_3d", files, in_limits), 400, f"limit is {MAX_POINTS}")
    as_text = {"foreground": json.dumps([[1, 1, 1]] * (MAX_POINTS + 1))}
    assert_refused(post(server.url, "deepgrow", "deepgrow_3d", files, as_text), 400, f"limit is {MAX_POINTS}")
    nan_point = '{"foreground": [[NaN, 1, 1]]}'
    reply = requests.post(
        f"{server.url}/v1/deepgrow",
        params={"model": "deepgrow_3d"},
        files=dict(files),
        data={"params": nan_point},
        timeout=60,
    )
    assert_refused(reply, 400, "finite")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"output": "pdf"}, "Unknown output"),
        ({"session_id": "x" * 5000}, "limit is"),
        ({"model": "m" * 5000}, "limit is"),
    ],
)
def test_bad_query_values_are_400(server, phantom_path, query, fragment):
    files = {"datapoint": (phantom_path.name, phantom_path.read_bytes())}
    reply = requests.post(f"{server.url}/v1/segmentation", params={"model": MODEL, **query}, files=files, timeout=60)
    assert_refused(reply, 400, fragment)


# ---------------------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("expiry", ["nan", "NaN", "inf", "-inf", "-1", "1e999", "abc"])
def test_session_expiry_must_be_a_finite_non_negative_number(server, phantom_path, expiry):
    reply = put_session(server, phantom_path.name, phantom_path.read_bytes(), expiry=expiry)
    assert_refused(reply, 400, "expiry")


def test_session_flags_and_valid_expiry(server, phantom_path):
    created = put_session(server, phantom_path.name, phantom_path.read_bytes(), expiry="60", uncompress="false")
    assert created.status_code == 200 and created.json()["session_info"]["expiry"] == 60
    session_id = created.json()["session_id"]
    bad_flag = requests.get(f"{server.url}/session/{session_id}", params={"update_ts": "perhaps"}, timeout=10)
    assert_refused(bad_flag, 400, "update_ts")
    assert_refused(put_session(server, phantom_path.name, phantom_path.read_bytes(), uncompress="2"), 400)
    assert requests.delete(f"{server.url}/session/{session_id}", timeout=10).json()["deleted"] is True
