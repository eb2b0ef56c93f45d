"""Pieces both transports share: reading images, remembering recently embedded bytes (for
the transparent re-embed), the retry policy, and request building."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgesam_client.errors import EdgeSamError

# Aliases are evaluated at import: typing's forms, as Python 3.8 has no `X | Y` or `list[X]`.
ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]
IMAGE_ID = re.compile(r"^[0-9a-fA-F]{64}$")  # either case: the server lower-cases
MAGIC = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


def is_image_id(value: object) -> bool:
    return isinstance(value, str) and bool(IMAGE_ID.match(value))


def content_type_of(data: bytes) -> str:
    for magic, media in MAGIC.items():
        if data.startswith(magic):
            return media
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def image_bytes(image: ImageLike) -> tuple[bytes, str]:
    """(bytes, content type) of a path, raw JPEG/PNG/WebP bytes, a uint8 HxWx3 RGB array
    (sent as PNG) or a PIL image (sent as PNG)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        data = Path(image).read_bytes()
    else:
        from PIL import Image

        if isinstance(image, np.ndarray):
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim not in (2, 3):
                raise TypeError("an image array must be uint8 HxW or HxWx3 (RGB)")
            pil = Image.fromarray(array)
        elif isinstance(image, Image.Image):
            pil = image
        else:
            raise TypeError(f"cannot send {type(image).__name__} as an image")
        buf = io.BytesIO()
        pil.save(buf, format="PNG")
        data = buf.getvalue()
    return data, content_type_of(data)


def image_id_of(data: bytes) -> str:
    """The server's image_id for these bytes (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


class ImageMemory:
    """The bytes of recently embedded images (bounded), so that an embedding_not_found
    answer can be healed by embedding again without the caller noticing."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._size = 0

    def put(self, image_id: str, data: bytes, content_type: str) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._items.pop(image_id, None)
        if old is not None:
            self._size -= len(old[0])
        self._items[image_id] = (data, content_type)
        self._size += len(data)
        while self._size > self.max_bytes:
            _, (dropped, _) = self._items.popitem(last=False)
            self._size -= len(dropped)

    def get(self, image_id: str) -> tuple[bytes, str] | None:
        item = self._items.get(image_id)
        if item is not None:
            self._items.move_to_end(image_id)
        return item


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of overloaded answers only: up to `max_retries`, waiting the server's
    retry-after or an exponential backoff (whichever is longer), with jitter, capped."""

    max_retries: int = 3
    base_s: float = 0.1
    cap_s: float = 5.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = self.base_s * (2**attempt)
        wait = max(backoff, retry_after or 0.0)
        return min(self.cap_s, wait) * (1.0 + 0.25 * random.random())

    def should_retry(self, exc: EdgeSamError, attempt: int) -> bool:
        return exc.code == "overloaded" and attempt < self.max_retries


def prompt_fields(
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    boxes: Any = None,
) -> dict[str, Any]:
    """Normalised prompts: points as [[x, y], ...], labels default to all foreground."""
    out: dict[str, Any] = {}
    if points is not None:
        pts = [[float(p[0]), float(p[1])] for p in np.asarray(points, dtype=float).reshape(-1, 2)]
        out["points"] = pts
        out["labels"] = [int(v) for v in labels] if labels is not None else [1] * len(pts)
    elif labels is not None:
        out["labels"] = [int(v) for v in labels]
    if box is not None:
        out["box"] = [float(v) for v in np.asarray(box, dtype=float).reshape(4)]
    if boxes is not None:
        out["boxes"] = [
            [float(v) for v in b] for b in np.asarray(boxes, dtype=float).reshape(-1, 4)
        ]
    return out
