"""TensorRT backend (TensorRT 10 Python API, and 8.5 on JetPack 5): engines built from our
ONNX export.

- Build: OnnxParser -> network, fp16 flag where asked, one optimisation profile per engine
  (encoder over image batches; decoder over prompts and points), a workspace limit, and a
  timing cache kept beside the engine cache so rebuilds are quick.
- Cache: encoder and decoder engines go into one file named by `trt_logic.EngineKey`, which
  covers the model fingerprint, the ONNX files, TensorRT's version, the GPU's name and compute
  capability, the precision and the profiles. A changed key means a rebuild; an explicitly
  given file that does not match is refused (`StaleEngineError`), as is a file we did not write
  (`ForeignEngineError`).
- Run: `execute_async_v3` on torch CUDA tensors; a pool of execution contexts (one per worker
  thread, each with its own stream).

`import tensorrt` happens only when an engine is built or loaded; key, profile and binding
logic lives in `trt_logic` and is tested without a GPU.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import onnx
import torch

from engine.backends.base import Backend, BackendError, BackendInfo, BackendUnavailable
from engine.backends.onnxruntime_backend import resolve_decoder_path
from engine.backends.trt_logic import (
    EngineKey,
    ProfileSpec,
    ShapeRange,
    TensorSpec,
    build_profile,
    check_engine_key,
    check_feeds,
    dim_ranges,
    dtype_name,
    needs_explicit_batch_flag,
    profile_as_json,
    read_engine_file,
    split_batches,
    tensorrt_opset,
    unsupported_onnx_ops,
    weak_precision_refusal,
    write_engine_file,
)
from engine.export.to_onnx import default_cache_dir, export_cached
from engine.onnx_format import DEFAULT_OPSET, FORMAT_NAME, file_digest, read_metadata
from engine.transforms import normalize_pixels

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16")
Progress = Callable[[str], None]
_TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int32": torch.int32,
    "int64": torch.int64,
    "int8": torch.int8,
    "bool": torch.bool,
    "uint8": torch.uint8,
}


def _import_trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "TensorRT is not installed (pip install 'edgesam-serve[tensorrt]' on a machine "
            "with an NVIDIA GPU)"
        ) from exc
    return trt


def installed_version() -> str:
    """The installed TensorRT's version (BackendUnavailable without one)."""
    return str(_import_trt().__version__)


def tensorrt_available() -> bool:
    """True when `tensorrt` imports and torch sees a CUDA device (nothing is initialised)."""
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def _cuda_index(device: str) -> int:
    kind, _, index = str(device).partition(":")
    if kind != "cuda":
        raise ValueError(f"the TensorRT backend runs on cuda devices, got {device!r}")
    return int(index or 0)


def runtime_identity(device_index: int) -> dict[str, str]:
    """TensorRT version, GPU name and compute capability of this machine."""
    trt = _import_trt()
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs a CUDA GPU and torch sees none")
    major, minor = torch.cuda.get_device_capability(device_index)
    return {
        "tensorrt_version": str(trt.__version__),
        "gpu_name": torch.cuda.get_device_name(device_index),
        "compute_capability": f"{major}.{minor}",
    }


def onnx_input_specs(path: str | os.PathLike[str]) -> list[TensorSpec]:
    """Inputs of an ONNX file with -1 for symbolic dimensions (read with `onnx`, no GPU)."""
    model = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in init:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        specs.append(TensorSpec(value.name, shape))
    return specs


def onnx_op_types(path: str | os.PathLike[str]) -> set[str]:
    """The operator types in an ONNX file (read with `onnx`, no GPU)."""
    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


def build_engine_bytes(
    onnx_path: str | os.PathLike[str],
    profile: Mapping[str, ShapeRange],
    precision: str,
    timing_cache_path: str | os.PathLike[str] | None = None,
    workspace_bytes: int = 2 << 30,
    progress: Progress = log.info,
) -> bytes:
    """Parse the ONNX file and build a serialised engine with one optimisation profile."""
    trt = _import_trt()
    unsupported = unsupported_onnx_ops(trt.__version__, onnx_op_types(onnx_path))
    if unsupported:
        raise BackendError(
            f"TensorRT {trt.__version__} cannot import {', '.join(unsupported)} from "
            f"{onnx_path}: export it again with `python -m engine.export onnx --for-tensorrt`"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # TensorRT 10: explicit batch is the only mode
    if needs_explicit_batch_flag(trt.__version__):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_blob = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        cache_blob = Path(timing_cache_path).read_bytes()
    timing_cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(timing_cache, False)
    start = time.perf_counter()
    progress(f"building {Path(onnx_path).name} ({precision}) - this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {onnx_path}")
    progress(f"  built in {time.perf_counter() - start:.0f}s")
    if timing_cache_path is not None:
        Path(timing_cache_path).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _read_onnx_pair(
    encoder_path: str | os.PathLike[str], decoder_path: str | os.PathLike[str] | None
) -> tuple[Path, Path, str]:
    enc = Path(encoder_path)
    dec = resolve_decoder_path(enc, decoder_path)
    meta = read_metadata(enc)
    if meta.get("edgesam.format") != FORMAT_NAME:
        raise BackendError(
            f"{enc.name} is not one of our ONNX exports (official ONNX files have a batch-1 "
            "encoder and no mask input): run `python -m engine.export onnx` first"
        )
    return enc, dec, meta["edgesam.fingerprint"]


def expected_key(
    encoder: Path,
    decoder: Path,
    fingerprint: str,
    precision: str,
    spec: ProfileSpec,
    identity: Mapping[str, str],
) -> tuple[EngineKey, dict[str, dict[str, ShapeRange]]]:
    profiles = {
        role: build_profile(onnx_input_specs(path), dim_ranges(role, spec))
        for role, path in (("encoder", encoder), ("decoder", decoder))
    }
    key = EngineKey(
        fingerprint=fingerprint,
        tensorrt_version=identity["tensorrt_version"],
        gpu_name=identity["gpu_name"],
        compute_capability=identity["compute_capability"],
        precision=precision,
        profiles={role: profile_as_json(p) for role, p in profiles.items()},
        onnx_digests={"encoder": file_digest(encoder), "decoder": file_digest(decoder)},
    )
    return key, profiles


def default_engine_dir() -> Path:
    return default_cache_dir() / "tensorrt"


def build_engines_for(
    encoder_path: str | os.PathLike[str],
    decoder_path: str | os.PathLike[str] | None = None,
    precision: str = "fp16",
    profile: ProfileSpec | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "cuda:0",
    workspace_gb: float = 2.0,
    force: bool = False,
    progress: Progress = log.info,
) -> list[Path]:
    """Build (or find in the cache) the engine file for an ONNX pair; returns what was written."""
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}")
    spec = profile or ProfileSpec()
    identity = runtime_identity(_cuda_index(device))
    refusal = weak_precision_refusal(str(identity["tensorrt_version"]), precision)
    if refusal:
        raise BackendUnavailable(refusal)
    enc, dec, fingerprint = _read_onnx_pair(encoder_path, decoder_path)
    progress(
        f"target: {identity['gpu_name']} (sm {identity['compute_capability']}), "
        f"TensorRT {identity['tensorrt_version']}, {precision}"
    )
    key, profiles = expected_key(enc, dec, fingerprint, precision, spec, identity)
    folder = Path(cache_dir) if cache_dir else default_engine_dir()
    path = folder / key.file_name(enc.name[: -len("_encoder.onnx")] or "edge_sam")
    if path.is_file() and not force:
        found, _ = read_engine_file(path)
        if found == key:
            progress(f"cached engine is current: {path}")
            return [path]
    timing = folder / (
        f"timing-trt{identity['tensorrt_version']}-sm"
        f"{identity['compute_capability'].replace('.', '')}.cache"
    )
    with torch.cuda.device(_cuda_index(device)):
        parts = {
            role: build_engine_bytes(
                p, profiles[role], precision, timing, int(workspace_gb * (1 << 30)), progress
            )
            for role, p in (("encoder", enc), ("decoder", dec))
        }
    write_engine_file(path, key, parts)
    return [path, timing]


class TrtRunner:
    """One deserialised engine and a pool of execution contexts (one per concurrent worker)."""

    def __init__(
        self, trt: Any, runtime: Any, blob: bytes, device: torch.device, num_contexts: int = 1
    ) -> None:
        self.engine = runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialise the engine")
        self.device = device
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            spec = TensorSpec(
                name,
                tuple(self.engine.get_tensor_shape(name)),
                dtype_name(self.engine.get_tensor_dtype(name)),
                is_input,
            )
            (self.inputs if is_input else self.outputs).append(spec)
        self.profile: dict[str, ShapeRange] = {
            t.name: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(t.name, 0))
            for t in self.inputs
        }  # type: ignore[misc]
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, num_contexts)):
            ctx = self.engine.create_execution_context()
            if ctx is None:
                raise BackendError("TensorRT could not create an execution context")
            self._pool.put((ctx, torch.cuda.Stream(device=device)))

    def run(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        check_feeds(self.inputs, {k: tuple(v.shape) for k, v in feeds.items()}, self.profile)
        ctx, stream = self._pool.get()
        try:
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                keep = []
                for t in self.inputs:
                    x = feeds[t.name].to(self.device, _TORCH_DTYPES[t.dtype]).contiguous()
                    keep.append(x)
                    if not ctx.set_input_shape(t.name, tuple(x.shape)):
                        raise BackendError(f"TensorRT refused shape {tuple(x.shape)} for {t.name}")
                    ctx.set_tensor_address(t.name, x.data_ptr())
                outs = {}
                for t in self.outputs:
                    shape = tuple(ctx.get_tensor_shape(t.name))
                    out = torch.empty(shape, dtype=_TORCH_DTYPES[t.dtype], device=self.device)
                    ctx.set_tensor_address(t.name, out.data_ptr())
                    outs[t.name] = out
                if not ctx.execute_async_v3(stream.cuda_stream):
                    raise BackendError("TensorRT execution failed")
            stream.synchronize()
            del keep
            return outs
        finally:
            self._pool.put((ctx, stream))


class TensorRTBackend(Backend):
    """Encoder and decoder engines on one GPU. Thread-safe up to `num_contexts` callers at
    once (more wait for a free context)."""

    def __init__(
        self,
        engine_path: str | os.PathLike[str],
        device: str = "cuda:0",
        expected: EngineKey | None = None,
        num_contexts: int = 1,
        precision: str | None = None,
    ) -> None:
        trt = _import_trt()
        index = _cuda_index(device)
        self.device = torch.device("cuda", index)
        key, parts = read_engine_file(engine_path)
        identity = runtime_identity(index)
        wanted = {**identity, **({"precision": precision} if precision else {})}
        here = EngineKey(**{**key.__dict__, **wanted})
        check_engine_key(engine_path, key, expected or here)
        if {"encoder", "decoder"} - set(parts):
            raise BackendError(f"{engine_path} lacks an encoder or decoder engine")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        with torch.cuda.device(index):
            self._enc = TrtRunner(trt, self._runtime, parts["encoder"], self.device, num_contexts)
            self._dec = TrtRunner(trt, self._runtime, parts["decoder"], self.device, num_contexts)
        self.key = key
        self.max_batch = self._enc.profile["image"][2][0]
        self.max_prompts = self._dec.profile["point_coords"][2][0]
        self.info = BackendInfo(
            name="tensorrt",
            device=str(self.device),
            precision=key.precision,
            fingerprint=key.fingerprint,
            supports_mask_input=True,
            max_batch=self.max_batch,
            details={
                "tensorrt": key.tensorrt_version,
                "gpu": key.gpu_name,
                "compute_capability": key.compute_capability,
                "engine": Path(engine_path).name,
                "contexts": str(num_contexts),
                "max_prompts": str(self.max_prompts),
            },
        )

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str] | None,
        device: str = "cuda:0",
        precision: str = "fp16",
        decoder_path: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        profile: ProfileSpec | None = None,
        num_contexts: int = 1,
        upsample_mode: str = "bicubic",
        **build_options: Any,
    ) -> TensorRTBackend:
        """An `.engine` file (checked, never rebuilt), our `_encoder.onnx` (built or taken from
        the cache), or a .pth/.safetensors checkpoint (exported to ONNX once, then built)."""
        if str(device).partition(":")[0] != "cuda":
            raise BackendUnavailable("the TensorRT backend needs a cuda device")
        trt = _import_trt()
        if path is not None and Path(path).suffix in (".engine", ".plan"):
            return cls(path, device, None, num_contexts, precision)
        if path is None or Path(path).suffix != ".onnx":
            path, decoder_path = export_cached(
                path,
                cache_dir and Path(cache_dir) / "onnx",
                upsample_mode,
                tensorrt_opset(trt.__version__, DEFAULT_OPSET),
            )
        written = build_engines_for(
            path,
            decoder_path,
            precision,
            profile,
            cache_dir and Path(cache_dir) / "tensorrt",
            device,
            **build_options,
        )
        return cls(written[0], device, None, num_contexts)

    @torch.inference_mode()
    def encode_pixels(
        self, pixels: torch.Tensor, input_sizes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        # uint8 crosses the bus, a quarter of float32's bytes, and SAM's normalisation runs on
        # the GPU (as TorchBackend does: 2x its host-to-host throughput on an H100)
        return self.encode(normalize_pixels(pixels.to(self.device), input_sizes))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 1024, 1024):
            raise ValueError(f"images must be Bx3x1024x1024, got {tuple(images.shape)}")
        outs = [
            self._enc.run({"image": images[a:b]})["image_embeddings"]
            for a, b in split_batches(images.shape[0], self.max_batch)
        ]
        return torch.cat(outs).float().cpu()

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = point_coords.shape[0]
        logits, ious = [], []
        for start, stop in split_batches(b, self.max_prompts):
            n = stop - start
            emb = (
                image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[start:stop]
            )
            if mask_input is None:
                mask = torch.zeros((n, 1, 256, 256), device=self.device)
                has = torch.zeros((1,), device=self.device)
            else:
                mask = mask_input.reshape(-1, 1, 256, 256)
                mask = mask.expand(n, -1, -1, -1) if mask.shape[0] == 1 else mask[start:stop]
                has = torch.ones((1,), device=self.device)
            out = self._dec.run(
                {
                    "image_embeddings": emb,
                    "point_coords": point_coords[start:stop],
                    "point_labels": point_labels[start:stop].to(torch.float32),
                    "mask_input": mask,
                    "has_mask_input": has,
                }
            )
            logits.append(out["low_res_logits"].float().cpu())
            ious.append(out["iou_predictions"].float().cpu())
        return self.select_outputs(torch.cat(logits), torch.cat(ious), num_multimask_outputs)

    def close(self) -> None:
        self._enc = None  # type: ignore[assignment]
        self._dec = None  # type: ignore[assignment]
