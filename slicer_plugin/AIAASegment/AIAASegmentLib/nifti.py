"""A minimal NIfTI-1 writer and reader, so volumes cross the wire without SimpleITK in Slicer's Python.

Only what the AIAA exchange needs: one scalar 3D volume, voxels in [i, j, k] order, the IJK→RAS
affine in both sform and qform (servers built on ITK read the qform, nibabel the sform), optional
gzip. The reader takes the sform when set, else the qform, as nibabel does.
"""

from __future__ import annotations

import gzip

import numpy as np

from .geometry import nearest_rotation

_HEADER = np.dtype(
    [
        ("sizeof_hdr", "i4"), ("data_type", "S10"), ("db_name", "S18"), ("extents", "i4"),
        ("session_error", "i2"), ("regular", "S1"), ("dim_info", "u1"), ("dim", "i2", 8),
        ("intent_p", "f4", 3), ("intent_code", "i2"), ("datatype", "i2"), ("bitpix", "i2"),
        ("slice_start", "i2"), ("pixdim", "f4", 8), ("vox_offset", "f4"), ("scl_slope", "f4"),
        ("scl_inter", "f4"), ("slice_end", "i2"), ("slice_code", "u1"), ("xyzt_units", "u1"),
        ("cal_max", "f4"), ("cal_min", "f4"), ("slice_duration", "f4"), ("toffset", "f4"),
        ("glmax", "i4"), ("glmin", "i4"), ("descrip", "S80"), ("aux_file", "S24"),
        ("qform_code", "i2"), ("sform_code", "i2"), ("quatern", "f4", 3), ("qoffset", "f4", 3),
        ("srow", "f4", (3, 4)), ("intent_name", "S16"), ("magic", "S4"),
    ]
)
assert _HEADER.itemsize == 348
_DATA_OFFSET = 352  # header + the 4-byte "no extensions" flag
_CODES = {
    np.dtype("uint8"): 2, np.dtype("int16"): 4, np.dtype("int32"): 8, np.dtype("float32"): 16,
    np.dtype("float64"): 64, np.dtype("int8"): 256, np.dtype("uint16"): 512, np.dtype("uint32"): 768,
    np.dtype("int64"): 1024, np.dtype("uint64"): 1280,
}
_DTYPES = {code: dtype for dtype, code in _CODES.items()}
_SCANNER_ANAT = 1
_MM = 2


def write_nifti(voxels: np.ndarray, ijk_to_ras: np.ndarray, compress: bool = True) -> bytes:
    """NIfTI-1 file bytes (`.nii.gz` when `compress`, else `.nii`) of an [i, j, k] array on `ijk_to_ras`."""
    voxels = np.asarray(voxels)
    if voxels.ndim != 3:
        raise ValueError(f"expected a 3D [i, j, k] array, got {voxels.ndim} dimensions")
    if voxels.dtype == np.bool_:
        voxels = voxels.astype(np.uint8)
    dtype = voxels.dtype.newbyteorder("=")
    if dtype not in _CODES:
        raise ValueError(f"NIfTI cannot hold voxels of type {voxels.dtype}")
    affine = np.asarray(ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise ValueError("the IJK→RAS matrix has a zero-length axis")
    quatern, qfac = _quaternion(affine[:3, :3] / spacing)

    header = np.zeros((), dtype=_HEADER.newbyteorder("<"))
    header["sizeof_hdr"] = 348
    header["regular"] = b"r"
    header["dim"] = [3, *voxels.shape, 1, 1, 1, 1]
    header["datatype"] = _CODES[dtype]
    header["bitpix"] = dtype.itemsize * 8
    header["pixdim"] = [qfac, *spacing, 1, 1, 1, 1]
    header["vox_offset"] = _DATA_OFFSET
    header["scl_slope"] = 1.0
    header["xyzt_units"] = _MM
    header["qform_code"] = header["sform_code"] = _SCANNER_ANAT
    header["quatern"] = quatern
    header["qoffset"] = affine[:3, 3]
    header["srow"] = affine[:3, :]
    header["magic"] = b"n+1"
    data = np.asarray(voxels, dtype=dtype.newbyteorder("<")).tobytes(order="F")
    raw = header.tobytes() + b"\0\0\0\0" + data
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


def read_nifti(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """([i, j, k] array, IJK→RAS 4×4) of NIfTI-1 bytes, gzipped or not; scaling applied if any."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < _DATA_OFFSET:
        raise ValueError("not a NIfTI-1 file: too short")
    order = "<" if int.from_bytes(data[:4], "little") == 348 else ">"
    header = np.frombuffer(data, dtype=_HEADER.newbyteorder(order), count=1)[0]
    if header["sizeof_hdr"] != 348 or header["magic"] not in (b"n+1", b"ni1"):
        raise ValueError("not a NIfTI-1 file")
    dims = [int(n) for n in header["dim"][1 : 1 + int(header["dim"][0])]]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise ValueError(f"expected a 3D volume, the file has dimensions {dims}")
    code = int(header["datatype"])
    if code not in _DTYPES:
        raise ValueError(f"unsupported NIfTI datatype code {code}")
    dtype = _DTYPES[code].newbyteorder(order)
    count = int(np.prod(dims))
    offset = int(header["vox_offset"])
    if len(data) < offset + count * dtype.itemsize:
        raise ValueError("the NIfTI file is truncated")
    voxels = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims, order="F")
    voxels = voxels.astype(dtype.newbyteorder("="))
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope not in (0.0, 1.0) or (slope != 0.0 and inter != 0.0):
        voxels = voxels * slope + inter
    return voxels, _affine(header)


def _affine(header: np.void) -> np.ndarray:
    affine = np.eye(4)
    pixdim = header["pixdim"].astype(float)
    if header["sform_code"] > 0:
        affine[:3, :] = header["srow"]
    elif header["qform_code"] > 0:
        b, c, d = header["quatern"].astype(float)
        a = np.sqrt(max(0.0, 1.0 - b * b - c * c - d * d))
        rotation = np.array(
            [
                [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ]
        )
        qfac = -1.0 if pixdim[0] < 0 else 1.0
        affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], qfac * pixdim[3]])
        affine[:3, 3] = header["qoffset"]
    else:
        affine[:3, :3] = np.diag(pixdim[1:4])
    return affine


def _quaternion(direction: np.ndarray) -> tuple[list[float], float]:
    """(b, c, d) of the rotation in `direction` and qfac (−1 for a left-handed grid), as NIfTI stores them."""
    rotation = nearest_rotation(direction)  # Slicer's matrices may carry float noise
    qfac = 1.0
    if np.linalg.det(rotation) < 0:
        qfac = -1.0
        rotation[:, 2] *= -1
    r = rotation
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    if q[0] < 0:  # NIfTI stores b, c, d and derives a ≥ 0
        q = [-v for v in q]
    return q[1:], qfac
