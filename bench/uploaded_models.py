"""Uploaded models on the fast path: the model zoo's spleen bundle, uploaded to a live server, against eager.

    .venv/bin/python bench/uploaded_models.py [--runs 5] [--out bench/results/uploaded_models.md]

Builds MONAI's `spleen_ct_segmentation` bundle as published (its inference config and metadata, kept in
`bench/zoo/spleen_ct_segmentation/configs/`: UNet 16-32-64-128-256 with batch norm and two residual units,
1.5×1.5×2 mm, sliding window 96³ with overlap 0.5), with random weights (seeded; the zoo's trained weights
are not downloaded), and starts `aiaa serve` with `--model-engine zoo_spleen_torch=torch`. The same
archive is uploaded twice: `zoo_spleen` (the default engine: ONNX Runtime once its export matched the
upload at install) and `zoo_spleen_torch` (`--engine torch`: the upload as it came, eager PyTorch). One
512×512×32 CT session, then per round one segmentation with each, and with the app's own
`segmentation_spleen`, in turn; the first round pays for the session's pre-processing, later rounds reuse
it. Prints the figures and writes a Markdown report (date, machine, command, load).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import secrets
import shlex
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
import torch
from requests_toolbelt.multipart.decoder import MultipartDecoder

REPO = Path(__file__).resolve().parents[1]

from processes import start_aiaa  # noqa: E402
from run_all import Client, load, machine, percentile  # noqa: E402

from aiaa_core.mask_geometry import dice  # noqa: E402
from aiaa_core.phantoms import make_phantom  # noqa: E402

FAST, EAGER, APP = "zoo_spleen", "zoo_spleen_torch", "segmentation_spleen"
CT_SIZE, CT_SPACING = (512, 512, 32), (0.75, 0.75, 5.0)  # 384×384×160 mm
ZOO_BUNDLE = REPO / "bench" / "zoo" / "spleen_ct_segmentation"  # configs/ as the model zoo publishes them


def zoo_spleen_bundle() -> bytes:
    """`spleen_ct_segmentation` as the model zoo publishes it (its configs/, read from `ZOO_BUNDLE`) with
    random seeded weights for the network its `network_def` names, as a zip."""
    from monai.networks.nets import UNet

    inference = json.loads((ZOO_BUNDLE / "configs" / "inference.json").read_text(encoding="utf-8"))
    network = {k: v for k, v in inference["network_def"].items() if k != "_target_"}
    torch.manual_seed(0)
    weights = io.BytesIO()
    torch.save(UNet(**network).state_dict(), weights)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((ZOO_BUNDLE / "configs").iterdir()):
            z.writestr(f"{ZOO_BUNDLE.name}/configs/{path.name}", path.read_bytes())
        z.writestr(f"{ZOO_BUNDLE.name}/models/model.pt", weights.getvalue())
    return archive.getvalue()


def segment(client: Client, model: str, session: str) -> tuple[float, np.ndarray]:
    """One segmentation on the session: round-trip seconds and the mask (as its file's voxels)."""
    started = time.perf_counter()
    reply = client.http.post(
        f"{client.url}/v1/segmentation",
        params={"model": model, "session_id": session},
        data={"params": "{}"},
        timeout=900,
    )
    seconds = time.perf_counter() - started
    reply.raise_for_status()
    part = MultipartDecoder(reply.content, reply.headers["Content-Type"]).parts[1]
    name = part.headers[b"Content-Disposition"].decode().split('filename="')[1].split('"')[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_bytes(part.content)
        return seconds, sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="aiaa-uploaded-") as tmp:
        tmp = Path(tmp)
        ct = tmp / "ct.nii.gz"
        sitk.WriteImage(make_phantom(11, size=CT_SIZE, spacing=CT_SPACING).image, str(ct))
        auth = ("bench-admin", secrets.token_hex(16))
        os.environ.update(AIAA_ADMIN_USER=auth[0], AIAA_ADMIN_PASSWORD=auth[1])  # the server inherits them
        server = start_aiaa(tmp / "aiaa", "--models", APP, "--model-engine", f"{EAGER}=torch", "--max-upload-mb", "64")
        try:
            archive, installs, info = zoo_spleen_bundle(), {}, {}
            for name in (FAST, EAGER):
                started = time.perf_counter()
                reply = requests.put(
                    f"{server.url}/admin/model/{name}",
                    files={"data": ("spleen_ct_segmentation.zip", archive)},
                    auth=auth,
                    timeout=900,
                )
                installs[name] = time.perf_counter() - started
                reply.raise_for_status()
                info[name] = reply.json()
            listed = {m["name"]: m for m in requests.get(f"{server.url}/v1/models", timeout=30).json()}
            client = Client(server.url)
            session, _ = client.upload(ct)
            seconds: dict[str, list[float]] = {FAST: [], EAGER: [], APP: []}
            masks = {}
            for round_ in range(args.runs):
                for name in seconds:
                    took, masks[name] = segment(client, name, session)
                    seconds[name].append(took)
                    print(f"round {round_ + 1}: {name:<20} {took:6.2f} s", flush=True)
        finally:
            server.stop()
    return {
        "seconds": seconds,
        "installs": installs,
        "engines": {name: listed[name]["engine"] for name in seconds},
        "agreement": dice(masks[FAST] > 0, masks[EAGER] > 0) if (masks[FAST] > 0).any() else None,
        "differing_voxels": int(((masks[FAST] > 0) != (masks[EAGER] > 0)).sum()),
        "info": info,
    }


def report(r: dict, args, started: datetime.datetime, load_before: str) -> str:
    command = "python bench/uploaded_models.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    rows = []
    for name, values in r["seconds"].items():
        later = values[1:] or values
        rows.append(
            f"| `{name}` | {r['engines'][name]} | {values[0]:.2f} | {percentile(later, 50):.2f} | "
            f"{min(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |"
        )
    fast = percentile(r["seconds"][FAST][1:] or r["seconds"][FAST], 50)
    eager = percentile(r["seconds"][EAGER][1:] or r["seconds"][EAGER], 50)
    fastest, eager_fastest = min(r["seconds"][FAST]), min(r["seconds"][EAGER])
    agreement = "no foreground" if r["agreement"] is None else f"Dice {r['agreement']:.4f}"
    return "\n".join(
        [
            "# Uploaded models: the zoo spleen bundle on the fast path against eager PyTorch",
            "",
            f"- Date: {started:%Y-%m-%d %H:%M} UTC; load average before: {load_before}; after: {load()}",
            f"- Machine: {machine()}",
            f"- Command: `{command}`",
            "- Model: MONAI model zoo `spleen_ct_segmentation` as published (its inference config and metadata,",
            "  UNet 16–256 with batch norm, 1.5×1.5×2 mm, sliding window 96³, overlap 0.5, sw_batch_size 4), random",
            "  seeded weights; uploaded twice to one `aiaa serve`: "
            f"`{FAST}` (default engine), `{EAGER}` (`--model-engine {EAGER}=torch`).",
            f"- Image: one session on a {'×'.join(map(str, CT_SIZE))} CT phantom at {CT_SPACING} mm; "
            "each round segments with the three models in turn.",
            "",
            "| model | engine | first (s, prepares the session) | p50 of later rounds (s) | min (s) | all (s) |",
            "| --- | --- | ---: | ---: | ---: | --- |",
            *rows,
            "",
            f"- Default engine against `--engine torch`: **{eager_fastest / fastest:.1f}×** faster per segmentation "
            f"by the fastest round ({fastest:.2f} s against {eager_fastest:.2f} s: the least disturbed by other "
            f"work on the machine), {eager / fast:.1f}× by the p50 of later rounds "
            f"({fast:.2f} s against {eager:.2f} s).",
            f"- Install (`PUT /admin/model`, with the export and its tolerance check for `{FAST}`): "
            + ", ".join(f"`{name}` {seconds:.1f} s" for name, seconds in r["installs"].items()),
            f"- Masks of the two uploads: {agreement}, {r['differing_voxels']} voxels differ.",
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="segmentations per model (the first prepares)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "uploaded_models.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    started, load_before = datetime.datetime.now(datetime.UTC), load()
    text = report(run(args), args, started, load_before)
    print(text)
    args.out.write_text(text, encoding="utf-8")
    return args.out


if __name__ == "__main__":
    main()
