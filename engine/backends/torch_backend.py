"""PyTorch backend: CPU (fp32, bf16) and CUDA (fp32, fp16, bf16), channels_last,
re-parameterised encoder, inference mode."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from engine.backends.base import (
    CPU_DECODE_CHUNK,
    IMAGE_SIZE,
    Backend,
    BackendInfo,
    BackendUnavailable,
)
from engine.checkpoint import weights_fingerprint
from engine.fusion import fuse_encoder
from engine.modeling import EdgeSam
from engine.modeling.mask_decoder import mask_slice
from engine.transforms import normalize_pixels

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Inductor options for `compile=True` (torch.compile(options=...)). The defaults ({}):
# freezing, conv_1x1_as_mm, CUDA graphs and max-autotune were no faster (bench/gpu_compile.py;
# figures in docs/performance.md, "GPU").
DEFAULT_COMPILE_OPTIONS: dict[str, Any] = {}


class TorchBackend(Backend):
    """Runs an `EdgeSam` module. `optimize=False` keeps the unfused eager model (baseline)."""

    def __init__(
        self,
        model: EdgeSam,
        device: str = "cpu",
        precision: str = "fp32",
        optimize: bool = True,
        fingerprint: str | None = None,
        num_threads: int | None = None,
        compile: bool = False,
        compile_options: Mapping[str, Any] | None = None,
        triton_mixer: bool = False,
        compile_warmup_batch: int | None = None,
        decoder_precision: str = "fp32",
        calibration_images: Sequence[np.ndarray] | None = None,
    ) -> None:
        if precision not in (*DTYPES, "int8"):
            raise ValueError(
                f"precision must be one of {sorted((*DTYPES, 'int8'))}, got {precision!r}"
            )
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("CUDA was asked for but torch sees no CUDA device")
        if dev.type == "cpu" and precision == "fp16":
            raise ValueError("the CPU path runs fp32 or bf16 (fp16 has no fast CPU kernels)")
        if num_threads:
            torch.set_num_threads(num_threads)
        if precision == "int8" and (dev.type != "cpu" or compile or triton_mixer or not optimize):
            raise ValueError(
                "int8 in the PyTorch backend is the CPU's compiled PT2E encoder "
                "(engine.torch_int8): no compile/triton_mixer options, optimize=True"
            )
        self.model = model.eval().to(dev)
        self.device = dev
        self.dtype = DTYPES.get(precision, torch.float32)
        self.optimize = optimize
        # bf16 on a CPU: autocast over fp32 weights. As fast as a bf16 copy of the model
        # (oneDNN reorders the weights once and caches them) and slightly closer to fp32, as
        # autocast keeps its fp32-only ops (reductions, softmax) in fp32 (docs/performance.md,
        # "CPU reduced precision"). The speed needs AVX-512 BF16 or AMX (engine.precision);
        # elsewhere it runs, correctly and slower than fp32.
        self._cpu_autocast = dev.type == "cpu" and precision == "bf16"
        # The decoder in bf16 (CPU autocast) where asked: it pays where many prompts share
        # one image (everything mode: 64 prompts cost several encodes); fp32 by default.
        if decoder_precision not in ("fp32", "bf16"):
            raise ValueError(f"decoder_precision must be fp32 or bf16, got {decoder_precision!r}")
        if decoder_precision == "bf16" and dev.type != "cpu":
            raise ValueError("decoder_precision bf16 is the CPU's autocast path")
        self._decoder_dtype = torch.bfloat16 if decoder_precision == "bf16" else None
        self._triton_mixer = self._check_triton_mixer(triton_mixer, dev)
        # channels_last pays on both: oneDNN on the CPU; on an H200 (fp16, batch 32) 1308 img/s
        # against 1052 in NCHW, once the bicubic upsampling is a matmul (bench/gpu_profile.py).
        self._channels_last = optimize
        fp = fingerprint or weights_fingerprint(
            model, model.image_encoder.fuse_stage3.upsample_mode
        )
        if precision == "int8" and fingerprint is None:
            fp += "-int8pt2e"  # quantised numbers never share cache entries with fp32 ones
        self.info = BackendInfo(
            name="torch",
            device=str(dev),
            precision=precision,
            fingerprint=fp,
            supports_mask_input=True,
            max_batch=32,
            details={"optimized": str(optimize).lower(), "torch": torch.__version__},
        )
        self._encoder = self._build_encoder()
        if self._triton_mixer is not None:
            counts = self._triton_mixer.use_triton_channel_mixers(self._encoder)
            self.info.details["triton_mixer"] = (
                f"{counts['mixers']} channel mixers ({counts['with_depthwise']} with their "
                f"depthwise conv, {counts['with_gate']} with their squeeze-excite gate)"
            )
        if self._decoder_dtype is not None:
            self.info.details["decoder_precision"] = decoder_precision
        self._int8: torch.nn.Module | None = None
        if precision == "int8":
            from engine import torch_int8
            from engine.precision import has_units

            # where the CPU has bf16 units, what stays float runs in bf16: 8% faster, the
            # embedding's error unchanged (0.152 against 0.150; docs/performance.md)
            mixed = has_units("bf16")
            self._int8 = torch_int8.quantize_encoder(self._encoder, calibration_images, mixed)
            self.info.details["int8"] = (
                "torchao PT2E, x86 inductor quantiser, "
                f"{len(calibration_images) if calibration_images is not None else 'synthetic'}"
                " calibration images" + (", float parts in bf16" if mixed else "")
            )
        self._compiled = None
        self._compile_warmup_batch = min(compile_warmup_batch or 32, 32)
        if compile:
            options = dict(DEFAULT_COMPILE_OPTIONS if compile_options is None else compile_options)
            self._compiled = torch.compile(self._encoder, dynamic=False, options=options or None)
            self.info.details["compiled"] = "true"
            self.info.details["compile_options"] = ",".join(
                f"{k}={v}" for k, v in sorted(options.items())
            )

    def _check_triton_mixer(self, wanted: bool, dev: torch.device) -> Any:
        """The `engine.triton_mixer` module when `wanted` and usable here, else None.

        Off by default: it is correct (tests run it through Triton's interpreter) but its
        speed-up has not yet been measured on a GPU; bench/gpu_compile.py times it."""
        if not wanted:
            return None
        if not self.optimize:
            raise ValueError("triton_mixer replaces re-parameterised layers: needs optimize=True")
        try:
            from engine import triton_mixer
        except ImportError as exc:
            raise BackendUnavailable(f"triton_mixer needs Triton, which is missing: {exc}") from exc
        if dev.type != "cuda" and not triton_mixer.INTERPRETER:
            raise ValueError("the Triton channel mixer runs on CUDA devices")
        return triton_mixer

    def _build_encoder(self) -> torch.nn.Module:
        encoder = self.model.image_encoder
        if self.optimize:
            encoder = fuse_encoder(encoder)
            if self._channels_last:
                encoder = encoder.to(memory_format=torch.channels_last)
        return encoder.to(self.device, torch.float32 if self._cpu_autocast else self.dtype)

    def warmup(self, encoder: bool = True) -> None:
        """The base warm-up; with `compile=True` on CUDA also every power-of-two batch bucket
        up to `compile_warmup_batch` (the batcher's largest batch): each compiles once, 13-25 s
        on an H100, at start-up rather than on a request. (On a CPU they compile when used.)"""
        super().warmup(encoder)
        if not encoder or self._compiled is None or self.device.type != "cuda":
            return
        bucket = 2
        while bucket < 2 * self._compile_warmup_batch:
            self.encode(torch.zeros((bucket, 3, IMAGE_SIZE, IMAGE_SIZE)))
            bucket *= 2

    @torch.inference_mode()
    def encode_pixels(
        self, pixels: torch.Tensor, input_sizes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        if self.device.type != "cuda":
            return super().encode_pixels(pixels, input_sizes)
        return self.encode(normalize_pixels(pixels.to(self.device), input_sizes, self.dtype))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if (
            self.device.type == "cuda"
            and self.dtype != torch.float32
            and images.device.type == "cpu"
        ):
            # Half precision crosses the bus both ways: half the bytes of fp32, and the copies,
            # not the network, bound a batch of 32 (bench/gpu_compile.py, host-to-host rows).
            images = images.to(self.dtype)
        if self._int8 is not None:
            # compiled for one contiguous 1x3x1024x1024 image: a batch runs image by image
            x = images.to(torch.float32).contiguous()
            return torch.cat([self._int8(x[i : i + 1]) for i in range(x.shape[0])]).float()
        x = images.to(self.device, torch.float32 if self._cpu_autocast else self.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._cpu_autocast):
            if self._compiled is None:
                out = self._encoder(x)
            else:
                # Compiled graphs are specialised to a batch size: pad to a power of two so
                # that a batcher's varying batches reuse a handful of graphs.
                n = x.shape[0]
                bucket = 1 << (n - 1).bit_length()
                if bucket != n:
                    x = torch.cat([x, x.new_zeros((bucket - n, *x.shape[1:]))])
                out = self._compiled(x)[:n]
        return out.contiguous().cpu().float()

    @torch.inference_mode()
    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        tokens = None if num_multimask_outputs is None else mask_slice(num_multimask_outputs)
        emb = image_embeddings.to(dev, torch.float32)
        coords = point_coords.to(dev, torch.float32)
        labels = point_labels.to(dev, torch.int64)
        mi = None if mask_input is None else mask_input.to(dev, torch.float32)
        # The prompt encoder stays fp32 (its Fourier features lose their meaning in half
        # precision); the rest of the decoder follows `decoder_precision`.
        dtype = self._decoder_dtype
        b = coords.shape[0]
        chunk = CPU_DECODE_CHUNK if dev.type == "cpu" else b
        if b <= chunk:
            logits, iou = self.model.decode(emb, coords, labels, mi, tokens, dtype)
            return logits.float().cpu(), iou.float().cpu()
        parts = [
            self.model.decode(
                emb if emb.shape[0] == 1 else emb[i : i + chunk],
                coords[i : i + chunk],
                labels[i : i + chunk],
                None if mi is None else mi[i : i + chunk],
                tokens,
                dtype,
            )
            for i in range(0, b, chunk)
        ]
        return torch.cat([p[0] for p in parts]).float().cpu(), torch.cat([p[1] for p in parts])
