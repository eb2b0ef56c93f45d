"""The one interface every runtime implements.

A backend runs the two halves of EdgeSAM on its device: `encode` (preprocessed images to
embeddings) and `decode` (an embedding and a batch of labelled points to low-res logits and
IoU predictions for all four mask tokens). Pre/post-processing, prompt transforms and mask
selection live above it (engine.core), so every backend is interchangeable.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from engine.modeling.mask_decoder import mask_slice
from engine.transforms import normalize_pixels

IMAGE_SIZE = 1024
EMBED_SHAPE = (256, 64, 64)
LOW_RES_SIZE = 256


# Prompts per decoder call on a CPU. A batch of 64 prompts makes 64x4096x256 key tensors that
# no cache holds and that a runtime's memory arena keeps at their high-water mark for good;
# small groups over the shared per-image work ran everything mode 1.6x faster (PyTorch) and
# bound the decoder's transient memory whatever the number of objects in a request.
CPU_DECODE_CHUNK = 4


class BackendError(RuntimeError):
    """A backend cannot be created or cannot run (missing runtime, bad model file, device)."""


class BackendUnavailable(BackendError):
    """The runtime this backend needs is not installed or has no usable device here."""


class UnsupportedPrompt(ValueError):
    """A prompt this backend's model cannot take (e.g. mask_input on official ONNX decoders)."""


@dataclass(frozen=True)
class BackendInfo:
    """What a backend runs on; reported by health checks and metrics."""

    name: str  # "torch", "onnxruntime", "tensorrt"
    device: str  # "cpu", "cuda:0", ...
    precision: str  # "fp32", "fp16", "bf16"
    fingerprint: str  # stable hash of the weights (and anything changing the numbers)
    supports_mask_input: bool = True
    max_batch: int = 32
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendHealth:
    ok: bool
    latency_ms: float
    info: BackendInfo
    error: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["info"] = asdict(self.info)
        return out


def _probe_prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """One point and a padding point: what warm-up and health checks decode."""
    coords = torch.tensor([[[512.0, 512.0], [0.0, 0.0]]])
    return coords, torch.tensor([[1, -1]], dtype=torch.int64)


class Backend(ABC):
    """encode / decode / warmup / health. Implementations are safe to call from several
    threads at once unless `info.details["thread_safe"] == "false"`."""

    info: BackendInfo

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Bx3x1024x1024 float32 (normalised, padded) -> Bx256x64x64 float32 on the CPU."""

    def encode_pixels(
        self, pixels: torch.Tensor, input_sizes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """Bx3x1024x1024 uint8 from `transforms.image_to_pixels` and each image's resized
        (h, w) -> the embeddings `encode` gives for the normalised images. Backends on a GPU
        normalise there, so a quarter of the bytes cross the bus."""
        return self.encode(normalize_pixels(pixels, input_sizes))

    @abstractmethod
    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings 1x256x64x64 (shared by the batch) or Bx256x64x64;
        point_coords BxNx2 float32 (x, y) in the 1024 frame; point_labels BxN int64 in
        {-1 padding, 0 background, 1 foreground, 2 box top-left, 3 box bottom-right};
        mask_input Bx1x256x256 low-res logits or None.
        Returns (low-res logits Bx4x256x256, IoU predictions Bx4), float32 on the CPU: all
        four candidates, or with `num_multimask_outputs` (1, 3 or 4) just those of
        `mask_slice` (BxK), which a backend may compute alone."""

    @staticmethod
    def select_outputs(
        logits: torch.Tensor, iou: torch.Tensor, num_multimask_outputs: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For backends whose graph computes all four candidates: keep the requested ones."""
        if num_multimask_outputs is None:
            return logits, iou
        selected = mask_slice(num_multimask_outputs)
        return logits[:, selected], iou[:, selected]

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def warmup(self, encoder: bool = True) -> None:
        """Run each half once so the first request pays no lazy initialisation; the decoder
        alone with `encoder=False` (a decoder-only replica, where an encode would only grow
        memory: ~110 MB of ONNX Runtime arena)."""
        if encoder:
            emb = self.encode(torch.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE)))
        else:
            emb = torch.zeros((1, *EMBED_SHAPE))
        self.decode(emb, *_probe_prompt())

    def warmup_batch(self, batch: int) -> None:
        """Encode one batch of `batch` blank images: a runtime that keeps per-shape memory
        (ONNX Runtime's arena) reaches the size the largest batch needs at start-up, where
        it shows in the idle RSS, rather than hours into serving."""
        if batch > 1:
            self.encode(torch.zeros((batch, 3, IMAGE_SIZE, IMAGE_SIZE)))

    def health(self) -> BackendHealth:
        """Prove the device answers: one small decode on a zero embedding, checked finite."""
        start = time.perf_counter()
        try:
            emb = torch.zeros((1, *EMBED_SHAPE))
            coords, labels = _probe_prompt()
            logits, iou = self.decode(emb, coords, labels)
            if logits.shape != (1, 4, LOW_RES_SIZE, LOW_RES_SIZE) or not torch.isfinite(iou).all():
                raise BackendError("decode returned malformed or non-finite output")
        except Exception as exc:  # health reports failures, it never raises
            return BackendHealth(False, (time.perf_counter() - start) * 1e3, self.info, repr(exc))
        return BackendHealth(True, (time.perf_counter() - start) * 1e3, self.info)

    def close(self) -> None:
        """Release device resources (sessions, engines, buffers)."""  # noqa: B027
        return None
