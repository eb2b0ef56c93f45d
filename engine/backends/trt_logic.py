"""The GPU-free half of the TensorRT backend: engine-cache keys, engine-file headers,
optimisation profiles and binding checks. Pure functions over plain data, unit-tested on any
machine; nothing here imports tensorrt.

An engine is only valid for the exact model, TensorRT version, GPU model, compute capability,
precision and optimisation profile it was built for, so all of those go into the cache key and
into a header written in front of the serialised engines. Loading checks the header and refuses
foreign or stale files with a message that says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Tuple

from engine.backends.base import BackendError
from engine.compat import zip_strict

MAGIC = b"EDGESAM-TRT\x00"
HEADER_VERSION = 1
_LEN = struct.Struct("<Q")

Shape = Tuple[int, ...]
ShapeRange = Tuple[Shape, Shape, Shape]  # (min, opt, max)


class ForeignEngineError(BackendError):
    """The file is not an engine file written by this code."""


class StaleEngineError(BackendError):
    """The engine file was built for another model, TensorRT, GPU, precision or profile."""


@dataclass(frozen=True)
class ProfileSpec:
    """Batch ranges of the optimisation profiles (encoder images; decoder prompts and points)."""

    max_batch: int = 8
    opt_batch: int | None = None
    max_prompts: int = 64
    opt_prompts: int = 1
    max_points: int = 16
    opt_points: int = 2

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_prompts < 1 or self.max_points < 1:
            raise ValueError("profile maxima must be >= 1")
        if self.opt_batch is not None and not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError("opt_batch must lie in 1..max_batch")
        if not 1 <= self.opt_prompts <= self.max_prompts:
            raise ValueError("opt_prompts must lie in 1..max_prompts")
        if not 1 <= self.opt_points <= self.max_points:
            raise ValueError("opt_points must lie in 1..max_points")

    @property
    def encoder_opt_batch(self) -> int:
        """Default opt: the largest power of two <= max_batch / 2 (at least 1)."""
        if self.opt_batch is not None:
            return self.opt_batch
        opt = 1
        while opt * 2 <= max(1, self.max_batch // 2):
            opt *= 2
        return opt


@dataclass(frozen=True)
class TensorSpec:
    """One network or engine I/O tensor; -1 marks a dynamic dimension."""

    name: str
    shape: Shape
    dtype: str = "float32"
    is_input: bool = True


def dim_ranges(role: str, spec: ProfileSpec) -> dict[str, dict[int, tuple[int, int, int]]]:
    """Per input name, per dynamic axis: (min, opt, max) for our exported ONNX files."""
    if role == "encoder":
        return {"image": {0: (1, spec.encoder_opt_batch, spec.max_batch)}}
    if role == "decoder":
        prompts = (1, spec.opt_prompts, spec.max_prompts)
        points = (1, spec.opt_points, spec.max_points)
        return {
            "image_embeddings": {0: (1, 1, spec.max_prompts)},
            "point_coords": {0: prompts, 1: points},
            "point_labels": {0: prompts, 1: points},
            "mask_input": {0: prompts},
        }
    raise ValueError(f"role must be encoder or decoder, got {role!r}")


def build_profile(
    inputs: Sequence[TensorSpec], ranges: Mapping[str, Mapping[int, tuple[int, int, int]]]
) -> dict[str, ShapeRange]:
    """(min, opt, max) shapes for every input; every dynamic axis needs a range, static axes
    keep their size, and ranges for static axes or unknown inputs are refused."""
    known = {t.name for t in inputs}
    unknown = sorted(set(ranges) - known)
    if unknown:
        raise ValueError(f"profile ranges for inputs the network lacks: {unknown}")
    profile: dict[str, ShapeRange] = {}
    for t in inputs:
        axes = ranges.get(t.name, {})
        lo, opt, hi = [], [], []
        for axis, size in enumerate(t.shape):
            if size >= 0:
                if axis in axes:
                    raise ValueError(f"{t.name} axis {axis} is static ({size}); no range allowed")
                lo.append(size)
                opt.append(size)
                hi.append(size)
                continue
            if axis not in axes:
                raise ValueError(f"{t.name} axis {axis} is dynamic but has no profile range")
            a, b, c = axes[axis]
            if not 1 <= a <= b <= c:
                raise ValueError(
                    f"{t.name} axis {axis}: need 1 <= min <= opt <= max, got {a, b, c}"
                )
            lo.append(a)
            opt.append(b)
            hi.append(c)
        profile[t.name] = (tuple(lo), tuple(opt), tuple(hi))
    return profile


def profile_as_json(profile: Mapping[str, ShapeRange]) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in shapes] for name, shapes in sorted(profile.items())}


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. `digest()` names the cache file."""

    fingerprint: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: dict[str, dict[str, list[list[int]]]] = field(default_factory=dict)
    onnx_digests: dict[str, str] = field(default_factory=dict)
    format_version: int = HEADER_VERSION

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:24]

    def file_name(self, stem: str = "edge_sam") -> str:
        gpu = "".join(ch if ch.isalnum() else "-" for ch in self.gpu_name).strip("-").lower()
        return (
            f"{stem}-{self.precision}-{gpu}-sm{self.compute_capability.replace('.', '')}"
            f"-trt{self.tensorrt_version}-{self.digest()}.engine"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EngineKey:
        try:
            return cls(**data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ForeignEngineError(f"engine header has unexpected fields: {exc}") from exc


def key_differences(found: EngineKey, expected: EngineKey) -> list[str]:
    """Human-readable 'field: file X, here Y' lines for every field that differs."""
    a, b = asdict(found), asdict(expected)
    return [f"{k}: file {a[k]!r}, wanted {b[k]!r}" for k in sorted(b) if a.get(k) != b[k]]


def write_engine_file(
    path: str | os.PathLike[str], key: EngineKey, parts: Mapping[str, bytes]
) -> Path:
    """MAGIC, header length, JSON header (the key and part sizes), then the engines.

    Written to a temporary name and renamed, so readers never see half a file."""
    header = {"key": asdict(key), "parts": [[name, len(blob)] for name, blob in parts.items()]}
    raw = json.dumps(header, sort_keys=True).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        fh.write(_LEN.pack(len(raw)))
        fh.write(raw)
        for blob in parts.values():
            fh.write(blob)
    os.replace(tmp, path)
    return path


def read_engine_file(path: str | os.PathLike[str]) -> tuple[EngineKey, dict[str, bytes]]:
    """The key and the named engine blobs; ForeignEngineError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"engine file not found: {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise ForeignEngineError(
            f"{path} is not an EdgeSAM engine file (no {MAGIC[:-1].decode()} header): raw "
            "TensorRT plans from other tools are refused; build one with "
            "`python -m engine.export tensorrt`"
        )
    offset = len(MAGIC)
    try:
        (size,) = _LEN.unpack_from(data, offset)
        offset += _LEN.size
        header = json.loads(data[offset : offset + size])
        offset += size
        key = EngineKey.from_dict(header["key"])
        parts: dict[str, bytes] = {}
        for name, length in header["parts"]:
            parts[name] = data[offset : offset + length]
            if len(parts[name]) != length:
                raise ValueError("truncated")
            offset += length
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ForeignEngineError(f"{path}: damaged engine header or payload ({exc})") from exc
    return key, parts


def check_engine_key(path: str | os.PathLike[str], found: EngineKey, expected: EngineKey) -> None:
    """StaleEngineError listing what differs, when the file was built for something else."""
    diffs = key_differences(found, expected)
    if diffs:
        raise StaleEngineError(
            f"{path} was built for a different setup and cannot run here ("
            + "; ".join(diffs)
            + "). TensorRT engines are not portable across models, TensorRT versions, GPUs, "
            "precisions or profiles: rebuild with `python -m engine.export tensorrt`."
        )


def check_feeds(
    inputs: Sequence[TensorSpec],
    feeds: Mapping[str, Shape],
    profile: Mapping[str, ShapeRange],
) -> list[str]:
    """Validate input shapes against the engine's inputs and profile; returns the input names
    in engine order. Raises ValueError naming the first problem."""
    names = [t.name for t in inputs]
    missing = [n for n in names if n not in feeds]
    extra = sorted(set(feeds) - set(names))
    if missing or extra:
        raise ValueError(f"engine inputs {names}: missing {missing}, unexpected {extra}")
    for t in inputs:
        shape = tuple(int(s) for s in feeds[t.name])
        lo, _, hi = profile[t.name]
        if len(shape) != len(lo):
            raise ValueError(f"{t.name}: rank {len(shape)}, engine wants {len(lo)}")
        for axis, (s, a, b) in enumerate(zip_strict(shape, lo, hi)):
            if not a <= s <= b:
                raise ValueError(
                    f"{t.name} axis {axis} = {s} is outside the engine's profile [{a}, {b}]"
                )
    return names


def split_batches(total: int, max_batch: int) -> list[tuple[int, int]]:
    """[start, stop) chunks of at most max_batch covering range(total)."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    return [(i, min(i + max_batch, total)) for i in range(0, total, max_batch)]


TRT_DTYPE_NAMES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def dtype_name(trt_dtype: object) -> str:
    """'DataType.FLOAT' (str of a tensorrt.DataType) -> 'float32'."""
    text = str(trt_dtype).rsplit(".", 1)[-1].upper()
    if text not in TRT_DTYPE_NAMES:
        raise BackendError(f"unsupported TensorRT tensor type {trt_dtype}")
    return TRT_DTYPE_NAMES[text]


# TensorRT 8.5 (JetPack 5) against 10.x (JetPack 6, x86): what the code must do differently.
# Checked against TensorRT's Python bindings for 8.5 (python/src/infer/pyCore.cpp) and
# onnx-tensorrt's release/8.5-GA docs/operators.md.


def tensorrt_release(version: str) -> tuple[int, int]:
    """'8.5.2.2' -> (8, 5)."""
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def needs_explicit_batch_flag(version: str) -> bool:
    """Whether create_network needs NetworkDefinitionCreationFlag.EXPLICIT_BATCH: before
    TensorRT 10, flags=0 makes an implicit-batch network, which the ONNX parser refuses; 10
    has only explicit batch and deprecates the flag."""
    return tensorrt_release(version) < (10, 0)


def weak_precision_refusal(version: str, precision: str) -> str | None:
    """Why this TensorRT cannot build `precision` the way this code builds it, or None.

    Below fp32 the build sets BuilderFlag.FP16 on the fp32 ONNX (weak typing). TensorRT 11
    removed that flag with all weak typing: it builds only strongly typed networks, whose
    precision lives in the ONNX graph itself."""
    if precision != "fp32" and tensorrt_release(version) >= (11, 0):
        return (
            f"TensorRT {version} builds only strongly typed networks (BuilderFlag.FP16 was "
            f"removed in 11.0) and this backend builds {precision} through that flag: install "
            "TensorRT 10 (`pip install '.[tensorrt]'` pins tensorrt<11) or use precision fp32"
        )
    return None


def tensorrt_opset(version: str, wanted: int) -> int:
    """The ONNX opset to export for this TensorRT: at most 16 before 8.6, whose ONNX parser
    lacks LayerNormalization (how opset 17 writes layer norm; 16 writes plain arithmetic)."""
    return wanted if tensorrt_release(version) >= (8, 6) else min(wanted, 16)


def unsupported_onnx_ops(version: str, op_types: Iterable[str]) -> list[str]:
    """The ONNX operators among `op_types` this TensorRT's parser cannot import (those this
    model can contain)."""
    missing = {"LayerNormalization"} if tensorrt_release(version) < (8, 6) else set()
    return sorted(missing & set(op_types))
