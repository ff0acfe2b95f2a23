"""Builders for model uploads in the tests: tiny MONAI networks as TorchScript / state dict / ONNX, Clara v4
`config_aiaa.json` files, MONAI bundles, and .zip / .tar(.gz) archives of them (well-formed or hostile).

Everything is built in memory from real MONAI and PyTorch objects; nothing is downloaded. `write_folder` puts
files on disk, and `plant_hostile_models` commits payload models the way an older server did (no checks).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.networks.nets import UNet

Files = Mapping[str, bytes]  # archive member path → content

UNET_ARGS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 1,
}
CT_WINDOW = {"a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


def tiny_unet(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(**{**UNET_ARGS, **overrides}).eval()


def model_bytes(module: torch.nn.Module, kind: str) -> bytes:
    """The network as a `.ts` (TorchScript), `.pt` (state dict) or `.onnx` file's bytes."""
    buffer = io.BytesIO()
    if kind == "ts":
        torch.jit.save(torch.jit.script(module), buffer)
    elif kind == "pt":
        torch.save(module.state_dict(), buffer)
    elif kind == "onnx":
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, 32, 32, 32),),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "b", 2: "x", 3: "y", 4: "z"}, "pred": {0: "b", 2: "x", 3: "y", 4: "z"}},
        )
    else:
        raise ValueError(kind)
    return buffer.getvalue()


def v4_config(
    labels: tuple[str, ...] = ("organ",),
    description: str = "tiny UNet",
    roi: tuple[int, int, int] = (32, 32, 32),
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0),
    overlap: float = 0.25,
    network: dict | None = None,
) -> dict:
    """A Clara 4 style `config_aiaa.json` with monai.* transforms; `network` for state-dict weights."""
    config = {
        "version": "4",
        "type": "segmentation",
        "labels": list(labels),
        "description": description,
        "pre_transforms": [
            {"name": "monai.transforms.LoadImaged", "args": {"keys": "image"}},
            {"name": "monai.transforms.AddChanneld", "args": {"keys": "image"}},
            {"name": "monai.transforms.Orientationd", "args": {"keys": "image", "axcodes": "RAS"}},
            {"name": "monai.transforms.Spacingd", "args": {"keys": "image", "pixdim": list(spacing)}},
            {"name": "monai.transforms.ScaleIntensityRanged", "args": {"keys": "image", **CT_WINDOW}},
            {"name": "monai.transforms.EnsureTyped", "args": {"keys": "image", "dtype": "float32"}},
        ],
        "inference": {
            "input": "image",
            "output": "pred",
            "AIAA": {
                "name": "aiaa.inference.PyTorchInference",
                "args": {"scanning_window": True, "roi": list(roi), "overlap": overlap, "device": "cuda"},
            },
        },
        "post_transforms": [
            {"name": "monai.transforms.AsDiscreted", "args": {"keys": "pred", "argmax": True}},
            {"name": "monai.transforms.SqueezeDimd", "args": {"keys": "pred", "dim": 0}},
            {"name": "monai.transforms.ToNumpyd", "args": {"keys": "pred"}},
            {"name": "aiaa.transforms.Restored", "args": {"keys": "pred", "ref_image": "image"}},
        ],
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": "pred", "json": "result"}},
    }
    if network is not None:
        config["network"] = network
    return config


def unet_network_section(**overrides) -> dict:
    return {"name": "monai.networks.nets.UNet", "args": {**UNET_ARGS, **overrides}}


def mmar_files(config: dict | str | bytes, kind: str = "ts", module: torch.nn.Module | None = None) -> dict:
    """An MMAR's members: config/config_aiaa.json and models/model.<kind>."""
    if isinstance(config, dict):
        config = json.dumps(config, indent=2)
    if isinstance(config, str):
        config = config.encode()
    return {"config/config_aiaa.json": config, f"models/model.{kind}": model_bytes(module or tiny_unet(), kind)}


def spleen_inference_config(network: Mapping | None = None) -> dict:
    """inference.json of MONAI's spleen_ct_segmentation bundle, scaled down (UNet `network` args, sliding
    window), data loading, handlers and evaluator included: what a bundle from the model zoo holds."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", **(network or UNET_ARGS), "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [4.0, 4.0, 4.0], "mode": "bilinear"},
                {"_target_": "ScaleIntensityRanged", "keys": "image", **CT_WINDOW},
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False},
            ],
        },
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
             "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }  # fmt: skip


def bundle_files(labels: tuple[str, ...] = ("spleen",), module: torch.nn.Module | None = None) -> dict:
    """A MONAI bundle in the layout of MONAI's spleen_ct_segmentation, scaled down (UNet, sliding window)."""
    channel_def = {"0": "background", **{str(i + 1): label for i, label in enumerate(labels)}}
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.2",
        "monai_version": "1.5.2",
        "pytorch_version": "2.13.0",
        "name": "tiny spleen bundle",
        "task": "Spleen CT segmentation",
        "description": "A tiny spleen-style segmentation bundle for the tests",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "channel_def": channel_def}},
        },
    }  # fmt: skip
    inference = spleen_inference_config()
    module = module or tiny_unet(norm="batch")
    return {
        "configs/metadata.json": json.dumps(metadata, indent=2).encode(),
        "configs/inference.json": json.dumps(inference, indent=2).encode(),
        "models/model.pt": model_bytes(module, "pt"),
        "docs/README.md": b"# tiny spleen bundle\n",
        "LICENSE": b"Apache-2.0\n",
    }


def prefixed(files: Files, prefix: str) -> dict:
    return {f"{prefix}/{name}" if prefix else name: data for name, data in files.items()}


def zip_bytes(files: Files, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in prefixed(files, prefix).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(files: Files, prefix: str = "", compression: str = "gz") -> bytes:
    """A tar (compression "" ) or tar.gz ("gz") of the files, with folder entries like `tar czf` makes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as archive:
        folders = sorted({name.rsplit("/", 1)[0] for name in prefixed(files, prefix) if "/" in name})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            archive.addfile(info)
        for name, data in prefixed(files, prefix).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


class _SetStatePayload(torch.nn.Module):
    """A submodule whose TorchScript `__setstate__` (run by `torch.jit.load`) creates `path` with
    `torch.from_file(..., shared=True)`."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        created = torch.from_file(self.path, True, 16)
        self.training = state[1] and created.numel() > 0


class _WithPayload(torch.nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.net = tiny_unet()
        self.payload = _SetStatePayload(path)

    def forward(self, x):
        return self.net(self.payload(x))


def setstate_torchscript(marker: str) -> bytes:
    """A working tiny UNet as TorchScript whose loading creates the file `marker` (a hostile upload)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_WithPayload(marker)), buffer)
    return buffer.getvalue()


def rewrite_torchscript(data: bytes, old: str, new: str) -> bytes:
    """The archive with `old` replaced by `new` in its code files (a payload spelled another way)."""
    source, target = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith(".py"):
                content = content.replace(old.encode(), new.encode())
            out.writestr(info, content)
    return target.getvalue()


def onnx_with(domain: str = "", external: str | None = None) -> bytes:
    """A one-node ONNX graph (Identity on the image, 2 channels by Concat): an operator of `domain`, or
    a weight kept in the `external` file."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 1, "x", "y", "z"])
    pred = helper.make_tensor_value_info("pred", TensorProto.FLOAT, ["b", 2, "x", "y", "z"])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [1], [1.0])
    if external is not None:
        scale.ClearField("float_data")
        scale.data_location = TensorProto.EXTERNAL
        entry = scale.external_data.add()
        entry.key, entry.value = "location", external
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"], domain=domain),
        helper.make_node("Concat", ["scaled", "image"], ["pred"], axis=1),
    ]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph(nodes, "g", [image], [pred], initializer=[scale])
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def changed_bundle(change) -> dict:
    """The tiny bundle's files after `change(config)` edited its configs/inference.json (parsed)."""
    files = bundle_files()
    config = json.loads(files["configs/inference.json"])
    change(config)
    files["configs/inference.json"] = json.dumps(config).encode()
    return files


def write_folder(folder: Path, files: Files) -> Path:
    """The files under `folder` (member path → bytes), as an unpacked upload or a model version holds them."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def touch(marker: Path) -> dict:
    """LoadImage's extra args, which it passes to the reader it resolved: `subprocess.call(args=[...])`."""
    return {"args": ["touch", str(marker)]}


def installed_the_old_way(repo: Path, name: str, files: Files) -> Path:
    """A version folder as an older server committed it: files plus the marker, no check of today's."""
    from server.registry import MARKER

    folder = write_folder(repo / f"{name}@{len(list(repo.iterdir())) + 1}", files)
    (folder / MARKER).write_text(json.dumps({"name": name, "format": "mmar"}))
    return folder


def plant_hostile_models(repo: Path, marker: Path) -> None:
    """Two models committed the old way whose payloads would create `marker`: `alias_reader` (a loader
    alias whose reader runs a command) and `setstate` (TorchScript whose __setstate__ writes a file)."""
    config = v4_config()
    config["pre_transforms"][0] = {
        "name": "monai.transforms.LoadImageD",
        "args": {"keys": "image", "reader": "subprocess.call", **touch(marker)},
    }
    installed_the_old_way(repo, "alias_reader", mmar_files(config))
    installed_the_old_way(
        repo, "setstate", {**mmar_files(v4_config()), "models/model.ts": setstate_torchscript(str(marker))}
    )
