"""A deterministic stand-in for the model, for API tests without weights (test code: the
service never selects it; tests pass it as `SegmentationService(settings, backend=...)`).

encode: 16x16 average pooling of the normalised image, spread over 256 channels (so
different images give different embeddings). decode: positive discs around foreground points,
positive boxes, negative discs around background points; mask token c grows the mask by 8
pixels (1024 frame) per token; mask_input is added to the logits. Outputs depend only on the
inputs, never on randomness or timing.
"""

from __future__ import annotations

import hashlib
import time

import torch
import torch.nn.functional as F

from engine.backends.base import Backend, BackendInfo
from engine.compat import zip_strict

FAKE_RADIUS = 48.0  # 1024-frame pixels


class FakeBackend(Backend):
    def __init__(self, name: str = "fake", encode_delay_s: float = 0.0) -> None:
        self.encode_delay_s = encode_delay_s
        self.encode_calls = 0
        self.decode_calls = 0
        fp = hashlib.sha256(f"fake-backend:{name}".encode()).hexdigest()[:16]
        self.info = BackendInfo(
            name="fake",
            device="cpu",
            precision="fp32",
            fingerprint=fp,
            max_batch=8,
            details={"deterministic": "true"},
        )
        ys, xs = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
        self._xs = (xs + 0.5) * 4.0
        self._ys = (ys + 0.5) * 4.0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        if self.encode_delay_s:
            time.sleep(self.encode_delay_s)
        pooled = F.avg_pool2d(images.float(), 16)  # Bx3x64x64
        scales = torch.linspace(0.5, 1.5, 256).view(1, 256, 1, 1)
        return (pooled.repeat(1, 86, 1, 1)[:, :256] * scales).contiguous()

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.decode_calls += 1
        batch = point_coords.shape[0]
        logits = torch.empty((batch, 4, 256, 256))
        level = float(torch.tanh(image_embeddings.float().mean()))
        for b in range(batch):
            field = torch.full((256, 256), -FAKE_RADIUS)
            neg = torch.full((256, 256), float("inf"))
            labels = point_labels[b].tolist()
            coords = point_coords[b].float()
            corners: dict[int, torch.Tensor] = {}
            for (x, y), label in zip_strict(coords.tolist(), labels):
                dist = torch.sqrt((self._xs - x) ** 2 + (self._ys - y) ** 2)
                if label == 1:
                    field = torch.maximum(field, FAKE_RADIUS - dist)
                elif label == 0:
                    neg = torch.minimum(neg, dist - FAKE_RADIUS / 2)
                elif label in (2, 3):
                    corners[label] = torch.tensor([x, y])
            if 2 in corners and 3 in corners:
                (x0, y0), (x1, y1) = corners[2].tolist(), corners[3].tolist()
                inside = torch.minimum(
                    torch.minimum(self._xs - x0, x1 - self._xs),
                    torch.minimum(self._ys - y0, y1 - self._ys),
                )
                field = torch.maximum(field, inside)
            field = torch.minimum(field, neg)
            for c in range(4):
                logits[b, c] = (field + 8.0 * c) / 8.0
        if mask_input is not None:
            logits = logits + 0.5 * mask_input.float().reshape(-1, 1, 256, 256)
        iou = torch.tensor([0.55, 0.65, 0.75, 0.85]).repeat(batch, 1) + 0.05 * level
        return self.select_outputs(logits, iou.clamp(0.0, 1.0), num_multimask_outputs)
