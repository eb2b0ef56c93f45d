"""ONNX Runtime backend: CPU by default; CUDA and TensorRT execution providers when present.

Two file formats load:

- ours (`python -m engine.export onnx`): encoder with a dynamic batch; decoder taking a batch of
  prompts, a mask input and its flag; metadata names the weights fingerprint;
- the official pair published with the checkpoints (`edge_sam_3x_encoder.onnx`,
  `edge_sam_3x_decoder.onnx`): batch 1 only, float point labels, no mask input. Batches are
  looped here, and `info.supports_mask_input` is False.

Providers are chosen before the session exists and checked after it is made: ONNX Runtime falls
back to the CPU silently when a provider cannot start, and we refuse that instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends.base import (
    CPU_DECODE_CHUNK,
    Backend,
    BackendError,
    BackendInfo,
    BackendUnavailable,
    UnsupportedPrompt,
)
from engine.backends.torch_backend import TorchBackend
from engine.build_edge_sam import build_edge_sam
from engine.export.to_onnx import export_cached
from engine.modeling.mask_decoder import mask_slice
from engine.onnx_format import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    FORMAT_VERSION,
    IMAGE_SIDE_OUTPUTS,
    META_INT8_CALIBRATION,
    META_PRECISION,
    PROMPT_DECODER_INPUTS,
    file_digest,
    read_metadata,
    split_decoder_paths,
)
from engine.quantize import quantize_cached
from engine.tensor_cache import PerTensorCache

log = logging.getLogger(__name__)

FORMAT_OURS = "edgesam"
FORMAT_OFFICIAL = "official"
OFFICIAL_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
OFFICIAL_DECODER_OUTPUTS = ("scores", "masks")
CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
_OPT_LEVELS = ("disable", "basic", "extended", "all")
# Image-side decoder tensors (~12 MB per embedding) kept for the most recent embeddings.
IMAGE_SIDE_CACHE_SIZE = 4


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise BackendUnavailable("onnxruntime is not installed") from exc
    return ort


def resolve_decoder_path(
    encoder_path: str | os.PathLike[str], decoder_path: str | os.PathLike[str] | None = None
) -> Path:
    """The decoder beside `<name>_encoder.onnx` is `<name>_decoder.onnx`, unless given."""
    if decoder_path is not None:
        return Path(decoder_path)
    enc = Path(encoder_path)
    if not enc.name.endswith("_encoder.onnx"):
        raise BackendError(
            f"{enc.name} is not named <name>_encoder.onnx, so its decoder cannot be found "
            "beside it: pass decoder_path="
        )
    return enc.with_name(enc.name[: -len("_encoder.onnx")] + "_decoder.onnx")


def parse_device(device: str) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' / 'cuda:1' -> ('cuda', index)."""
    kind, _, index = str(device).partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {device!r}")
    if index and not index.isdigit():
        raise ValueError(f"bad device index in {device!r}")
    return kind, int(index or 0)


def plan_providers(
    device: str,
    precision: str = "fp32",
    use_tensorrt: bool = False,
    trt_cache_dir: str | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """The (provider, options) list to create sessions with, most preferred first.

    cpu -> CPU only (fp32, or int8 with an encoder from `engine.quantize`). cuda:N -> CUDA (fp32), then CPU for the few nodes CUDA lacks;
    with use_tensorrt, TensorRT first (fp32 or fp16, engine cache under trt_cache_dir).
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        if use_tensorrt:
            raise ValueError("the TensorRT execution provider needs a cuda device")
        if precision not in ("fp32", "int8"):
            raise ValueError("ONNX Runtime on the CPU runs fp32 or int8")
        return [(CPU_EP, {})]
    if precision == "int8":
        raise ValueError("the int8 encoder runs on the CPU execution provider")
    plan: list[tuple[str, dict[str, str]]] = []
    if use_tensorrt:
        trt_opts = {"device_id": str(index), "trt_fp16_enable": str(precision == "fp16")}
        if trt_cache_dir:
            trt_opts.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=trt_cache_dir,
                trt_timing_cache_enable="True",
            )
        plan.append((TRT_EP, trt_opts))
    elif precision != "fp32":
        raise ValueError(
            "ONNX Runtime's CUDA provider runs our fp32 export; for fp16 use the tensorrt "
            "backend or use_tensorrt=True"
        )
    plan.append((CUDA_EP, {"device_id": str(index)}))
    plan.append((CPU_EP, {}))
    return plan


def check_providers(
    planned: Sequence[str], available: Sequence[str], active: Sequence[str]
) -> None:
    """Refuse a session that did not get the accelerator it was planned for."""
    primary = planned[0]
    if primary not in available:
        raise BackendUnavailable(
            f"{primary} is not available in this onnxruntime build (has {list(available)}); "
            "install onnxruntime-gpu for CUDA/TensorRT"
        )
    if not active or active[0] != primary:
        raise BackendUnavailable(
            f"ONNX Runtime was asked for {primary} but the session runs on {list(active)} "
            "(the provider failed to start: check CUDA/cuDNN/TensorRT libraries)"
        )


def detect_format(
    encoder_inputs: Sequence[str], decoder_inputs: Sequence[str], decoder_outputs: Sequence[str]
) -> str:
    """FORMAT_OURS, FORMAT_OFFICIAL, or BackendError naming what was found."""
    if list(encoder_inputs) != ["image"]:
        raise BackendError(f"unexpected encoder inputs {list(encoder_inputs)} (want ['image'])")
    if tuple(decoder_inputs) == DECODER_INPUTS and set(DECODER_OUTPUTS[:2]) <= set(decoder_outputs):
        return FORMAT_OURS
    if tuple(decoder_inputs) == OFFICIAL_DECODER_INPUTS and set(OFFICIAL_DECODER_OUTPUTS) <= set(
        decoder_outputs
    ):
        return FORMAT_OFFICIAL
    raise BackendError(
        f"unrecognised decoder: inputs {list(decoder_inputs)}, outputs {list(decoder_outputs)}; "
        f"expected ours {list(DECODER_INPUTS)} or the official {list(OFFICIAL_DECODER_INPUTS)}"
    )


def _np(x: torch.Tensor, dtype: np.dtype = np.float32) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)


class OnnxRuntimeBackend(Backend):
    """An encoder session and a decoder session. `session.run` is thread-safe, so one backend
    serves concurrent callers."""

    def __init__(
        self,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        intra_op_num_threads: int | None = None,
        inter_op_num_threads: int | None = None,
        use_tensorrt: bool = False,
        graph_optimization_level: str = "all",
        session_config: Mapping[str, str] | None = None,
        trt_cache_dir: str | None = None,
        max_batch: int = 32,
        fingerprint: str | None = None,
        split_decoder: bool = True,
        memory_pattern: bool | None = None,
    ) -> None:
        ort = _import_ort()
        self._torch_decoder: Backend | None = None
        self.encoder_path = Path(encoder_path)
        self.decoder_path = resolve_decoder_path(encoder_path, decoder_path)
        for p in (self.encoder_path, self.decoder_path):
            if not p.is_file():
                raise BackendError(f"ONNX file not found: {p}")
        if graph_optimization_level not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization_level must be one of {_OPT_LEVELS}")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        plan = plan_providers(device, precision, use_tensorrt, trt_cache_dir)
        names = [name for name, _ in plan]
        opts = ort.SessionOptions()
        if intra_op_num_threads:
            opts.intra_op_num_threads = int(intra_op_num_threads)
        if inter_op_num_threads:
            opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization_level]
        # ORT plans a memory pattern per input shape on its second run and keeps it in its
        # arena for good: on a CPU the encoder's batch-2 pattern alone held 265 MB for no
        # measurable speed (bench in docs/reliability.md, "30-minute soak"). Off on CPUs.
        if memory_pattern is None:
            memory_pattern = parse_device(device)[0] != "cpu"
        opts.enable_mem_pattern = bool(memory_pattern)
        # ORT's workers spin after each run by default, taking the cores from whatever runs
        # next in this process (the service's PyTorch decode threads, HTTP, gRPC); measured
        # with bench/encoder.py, that doubled the latency of the next PyTorch call.
        config = {"session.intra_op.allow_spinning": "0", **(session_config or {})}
        for key, value in config.items():
            opts.add_session_config_entry(str(key), str(value))
        available = ort.get_available_providers()
        if names[0] not in available:
            check_providers(names, available, [])
        try:
            self._enc = ort.InferenceSession(
                str(self.encoder_path), opts, providers=names, provider_options=[o for _, o in plan]
            )
            self._dec = ort.InferenceSession(
                str(self.decoder_path), opts, providers=names, provider_options=[o for _, o in plan]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(
                f"ONNX Runtime could not load {self.encoder_path.name} / "
                f"{self.decoder_path.name}: {exc}"
            ) from exc
        for sess in (self._enc, self._dec):
            check_providers(names, available, sess.get_providers())

        enc_in = [i.name for i in self._enc.get_inputs()]
        dec_in = [i.name for i in self._dec.get_inputs()]
        dec_out = [o.name for o in self._dec.get_outputs()]
        self.format = detect_format(enc_in, dec_in, dec_out)
        batch_dim = self._enc.get_inputs()[0].shape[0]
        self.encoder_batch_fixed = isinstance(batch_dim, int)
        self.max_batch = int(max_batch)
        self._zeros = np.zeros((0, 1, 256, 256), np.float32)
        self._zeros_lock = threading.Lock()
        self._image_side_sess: Any = None
        self._prompt_sess: Any = None
        self._side_cache: PerTensorCache[list[np.ndarray]] = PerTensorCache(IMAGE_SIDE_CACHE_SIZE)
        if split_decoder and self.format == FORMAT_OURS:
            self._open_split_decoder(ort, opts, plan, available)

        meta = read_metadata(self.encoder_path)
        file_precision = meta.get(META_PRECISION, "fp32")
        if (file_precision == "int8") != (precision == "int8"):
            raise BackendError(
                f"{self.encoder_path.name} is an {file_precision} encoder but precision "
                f"{precision!r} was asked for (int8 encoders: `python -m engine.export onnx "
                "--int8`, run with precision int8)"
            )
        if fingerprint is None:
            fingerprint = meta.get("edgesam.fingerprint") or (
                "onnx-" + file_digest(self.encoder_path, 8) + file_digest(self.decoder_path, 8)
            )
        kind, index = parse_device(device)
        self.info = BackendInfo(
            name="onnxruntime",
            device="cpu" if kind == "cpu" else f"cuda:{index}",
            precision=precision,
            fingerprint=fingerprint,
            supports_mask_input=self.format == FORMAT_OURS,
            max_batch=self.max_batch,
            details={
                "onnxruntime": ort.__version__,
                "format": self.format,
                "providers": ",".join(self._enc.get_providers()),
                "intra_op_num_threads": str(intra_op_num_threads or "default"),
                "encoder": self.encoder_path.name,
                "decoder": self.decoder_path.name,
                "upsample_mode": meta.get("edgesam.upsample_mode", "bilinear (official export)"),
                "split_decoder": str(self._prompt_sess is not None).lower(),
                **(
                    {"int8_calibration": meta.get(META_INT8_CALIBRATION, "")}
                    if file_precision == "int8"
                    else {}
                ),
            },
        )

    def _open_split_decoder(
        self, ort: Any, opts: Any, plan: list[tuple[str, dict[str, str]]], available: list[str]
    ) -> None:
        """Sessions for `<name>_decoder_image.onnx` / `_decoder_prompt.onnx` when both lie
        beside the decoder and were exported with it (same fingerprint); else the full
        decoder serves every prompt."""
        image_path, prompt_path = split_decoder_paths(self.decoder_path)
        if not (image_path.is_file() and prompt_path.is_file()):
            return
        want = read_metadata(self.decoder_path).get("edgesam.fingerprint")
        for path, role in ((image_path, "decoder_image"), (prompt_path, "decoder_prompt")):
            meta = read_metadata(path)
            if meta.get("edgesam.role") != role or meta.get("edgesam.fingerprint") != want:
                log.warning("ignoring %s: not exported with %s", path, self.decoder_path.name)
                return
            if meta.get("edgesam.format_version") != FORMAT_VERSION:
                # the halves' inputs changed between versions; the full decoder serves all
                log.warning("ignoring %s: split decoder of another export version", path)
                return
        names = [name for name, _ in plan]
        options = [o for _, o in plan]
        try:
            image_sess = ort.InferenceSession(
                str(image_path), opts, providers=names, provider_options=options
            )
            prompt_sess = ort.InferenceSession(
                str(prompt_path), opts, providers=names, provider_options=options
            )
        except Exception as exc:  # a damaged optional file must not stop the backend
            log.warning("split decoder not used: %s", exc)
            return
        for sess in (image_sess, prompt_sess):
            check_providers(names, available, sess.get_providers())
        if [o.name for o in image_sess.get_outputs()] != list(IMAGE_SIDE_OUTPUTS) or [
            i.name for i in prompt_sess.get_inputs()
        ] != list(PROMPT_DECODER_INPUTS):
            log.warning("split decoder not used: unexpected inputs/outputs")
            return
        self._image_side_sess, self._prompt_sess = image_sess, prompt_sess

    def _image_side(self, image_embeddings: torch.Tensor, emb: np.ndarray) -> list[np.ndarray]:
        """The image half's outputs for this embedding tensor, computed once while it lives
        (repeated clicks on one image pass the same tensor)."""
        side = self._side_cache.get(image_embeddings)
        if side is None:
            side = self._image_side_sess.run(None, {"image_embeddings": emb})
            self._side_cache.put(image_embeddings, side)
        return side

    # -- construction from any model path ---------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str] | None,
        device: str = "cpu",
        decoder_path: str | os.PathLike[str] | None = None,
        precision: str = "fp32",
        cache_dir: str | os.PathLike[str] | None = None,
        upsample_mode: str = "bicubic",
        decoder_runtime: str = "onnxruntime",
        **options: Any,
    ) -> OnnxRuntimeBackend:
        """`<name>_encoder.onnx` (ours or official); or a .pth/.safetensors checkpoint, exported
        once into the cache folder (EDGESAM_CACHE_DIR or ~/.cache/edgesam) and reused; with
        precision int8 its encoder is also quantised once (`engine.quantize.quantize_cached`,
        the default synthetic calibration set).

        decoder_runtime="torch" (checkpoints only) decodes with the PyTorch model instead:
        on a CPU ONNX Runtime runs the encoder faster and PyTorch, whose decoder caches the
        image-side work per embedding, the clicks (bench/encoder.py)."""
        if decoder_runtime not in ("onnxruntime", "torch"):
            raise ValueError("decoder_runtime must be onnxruntime or torch")
        if path is not None and Path(path).suffix == ".onnx":
            return cls(path, decoder_path, device, precision, **options)
        encoder, decoder = export_cached(path, cache_dir, upsample_mode)
        if precision == "int8":
            encoder, decoder = quantize_cached(encoder, decoder)
        try:
            backend = cls(encoder, decoder, device, precision, **options)
        finally:
            if path is None:  # random weights: a throwaway export, in the sessions by now
                shutil.rmtree(encoder.parent, ignore_errors=True)
        if decoder_runtime == "torch" and path is not None:
            model = build_edge_sam(path, upsample_mode=upsample_mode)  # type: ignore[arg-type]
            backend._torch_decoder = TorchBackend(model, optimize=False)
            backend.info.details["decode_runtime"] = "torch"
        return backend

    # -- the interface ------------------------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, 1024, 1024):
            raise ValueError(f"images must be Bx3x1024x1024, got {tuple(images.shape)}")
        x = _np(images)
        step = 1 if self.encoder_batch_fixed else self.max_batch
        outs = [self._enc.run(None, {"image": x[i : i + step]})[0] for i in range(0, len(x), step)]
        return torch.from_numpy(np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0])

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._torch_decoder is not None:
            return self._torch_decoder.decode(
                image_embeddings, point_coords, point_labels, mask_input, num_multimask_outputs
            )
        b = point_coords.shape[0]
        chunk = CPU_DECODE_CHUNK if self.info.device == "cpu" else b
        if b <= chunk or point_coords.ndim != 3:
            return self._decode(
                image_embeddings, point_coords, point_labels, mask_input, num_multimask_outputs
            )
        parts = [
            self._decode(
                image_embeddings if image_embeddings.shape[0] == 1 else image_embeddings[sl],
                point_coords[sl],
                point_labels[sl],
                None if mask_input is None or mask_input.shape[0] == 1 else mask_input[sl],
                num_multimask_outputs,
            )
            for sl in (slice(i, i + chunk) for i in range(0, b, chunk))
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None,
        num_multimask_outputs: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = point_coords.shape[0]
        if (
            point_coords.ndim != 3
            or point_coords.shape[2] != 2
            or point_labels.shape != (b, point_coords.shape[1])
        ):
            raise ValueError("point_coords must be BxNx2 and point_labels BxN")
        if image_embeddings.shape[0] not in (1, b):
            raise ValueError("image_embeddings must have batch 1 or the prompts' batch")
        emb = _np(image_embeddings)
        coords = _np(point_coords)
        labels = _np(point_labels)
        if self.format == FORMAT_OFFICIAL:
            if mask_input is not None:
                raise UnsupportedPrompt("the official ONNX decoder takes no mask_input")
            logits, iou = self._decode_official(emb, coords, labels)
            return self.select_outputs(logits, iou, num_multimask_outputs)
        if mask_input is None and self._prompt_sess is not None and emb.shape[0] == 1:
            side = self._image_side(image_embeddings, emb)
            feeds = {name: side[i] for i, name in enumerate(IMAGE_SIDE_OUTPUTS)}
            # only the requested masks are upscaled (the single mask: a quarter of the work)
            selected = mask_slice(4 if num_multimask_outputs is None else num_multimask_outputs)
            tokens = np.arange(selected.start, selected.stop, dtype=np.int64)
            logits, iou = self._prompt_sess.run(
                ["low_res_logits", "iou_predictions"],
                {**feeds, "point_coords": coords, "point_labels": labels, "mask_tokens": tokens},
            )
            return torch.from_numpy(logits), torch.from_numpy(iou)
        if mask_input is None:
            mask, has = self._zero_masks(b), np.zeros((1,), np.float32)
        else:
            mask = _np(mask_input).reshape(-1, 1, 256, 256)
            if mask.shape[0] == 1 and b > 1:
                mask = np.ascontiguousarray(np.broadcast_to(mask, (b, 1, 256, 256)))
            has = np.ones((1,), np.float32)
        logits, iou = self._dec.run(
            ["low_res_logits", "iou_predictions"],
            {
                "image_embeddings": emb,
                "point_coords": coords,
                "point_labels": labels,
                "mask_input": mask,
                "has_mask_input": has,
            },
        )
        return self.select_outputs(
            torch.from_numpy(logits), torch.from_numpy(iou), num_multimask_outputs
        )

    def _decode_official(
        self, emb: np.ndarray, coords: np.ndarray, labels: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        masks, scores = [], []
        for i in range(coords.shape[0]):
            e = emb[0:1] if emb.shape[0] == 1 else emb[i : i + 1]
            s, m = self._dec.run(
                list(OFFICIAL_DECODER_OUTPUTS),
                {
                    "image_embeddings": e,
                    "point_coords": coords[i : i + 1],
                    "point_labels": labels[i : i + 1],
                },
            )
            scores.append(s)
            masks.append(m)
        return torch.from_numpy(np.concatenate(masks)), torch.from_numpy(np.concatenate(scores))

    def _zero_masks(self, b: int) -> np.ndarray:
        """A read-only Bx1x256x256 zero mask input: a view of one buffer, grown to the
        largest batch seen, so it never holds more than one batch's worth."""
        with self._zeros_lock:
            if self._zeros.shape[0] < b:
                self._zeros = np.zeros((b, 1, 256, 256), np.float32)
                self._zeros.setflags(write=False)
            return self._zeros[:b]

    def close(self) -> None:
        self._enc = None  # type: ignore[assignment]
        self._dec = None  # type: ignore[assignment]
        self._image_side_sess = self._prompt_sess = None
        self._side_cache.clear()
