"""What the client returns: plain dataclasses, the same for HTTP and gRPC. Masks decode to
numpy arrays on first use of `.array` (from RLE, else PNG, else polygons)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from edgesam_client import rle as rle_codec


@dataclass(frozen=True)
class EmbedResult:
    image_id: str
    width: int
    height: int
    cached: bool
    expires_in: int


@dataclass(frozen=True)
class Rle:
    size: tuple[int, int]  # (height, width)
    counts: str

    def as_dict(self) -> dict:
        return {"size": list(self.size), "counts": self.counts}


@dataclass(eq=False)
class Mask:
    """One mask. `bbox` is (x, y, width, height); `png` raw PNG bytes when asked for;
    `polygons` outer contours, each [x0, y0, x1, y1, ...]."""

    score: float
    stability_score: float
    bbox: tuple[int, int, int, int]
    area: int
    height: int
    width: int
    rle: Rle | None = None
    png: bytes | None = None
    polygons: list[list[float]] | None = None
    prompt_index: int = 0
    mask_index: int = 0
    point: tuple[float, float] | None = None  # everything mode: the grid point

    @cached_property
    def array(self) -> np.ndarray:
        """The mask as bool HxW (original image size)."""
        if self.rle is not None:
            return rle_codec.decode(self.rle.as_dict())
        if self.png is not None:
            from PIL import Image

            return np.asarray(Image.open(io.BytesIO(self.png)).convert("L")) > 0
        if self.polygons is not None:
            from PIL import Image, ImageDraw

            canvas = Image.new("L", (self.width, self.height), 0)
            draw = ImageDraw.Draw(canvas)
            for poly in self.polygons:
                draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
            return np.asarray(canvas) > 0
        raise ValueError("the mask came without rle, png or polygons")


@dataclass
class SegmentResult:
    image_id: str
    width: int
    height: int
    masks: list[Mask]
    mask_input_id: str | None = None
    mask_input_ids: list[str] = field(default_factory=list)

    @property
    def best(self) -> Mask:
        """The highest-scoring mask of the first prompt."""
        first = [m for m in self.masks if m.prompt_index == 0] or self.masks
        if not first:
            raise ValueError("the answer has no masks")
        return max(first, key=lambda m: m.score)


@dataclass
class EverythingResult:
    image_id: str
    width: int
    height: int
    masks: list[Mask]


def _bbox(value: Any) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in value)
    return (x, y, w, h)


def mask_from_json(item: dict, height: int, width: int) -> Mask:
    """An HTTP mask object (png is base64 there)."""
    import base64

    rle = item.get("rle")
    point = item.get("point")
    return Mask(
        score=float(item["score"]),
        stability_score=float(item["stability_score"]),
        bbox=_bbox(item["bbox"]),
        area=int(item["area"]),
        height=height,
        width=width,
        rle=Rle((int(rle["size"][0]), int(rle["size"][1])), rle["counts"]) if rle else None,
        png=base64.b64decode(item["png"]) if item.get("png") else None,
        polygons=item.get("polygons"),
        prompt_index=int(item.get("prompt_index", 0)),
        mask_index=int(item.get("mask_index", 0)),
        point=(float(point[0]), float(point[1])) if point else None,
    )


def segment_from_json(body: dict) -> SegmentResult:
    h, w = int(body["height"]), int(body["width"])
    return SegmentResult(
        image_id=body["image_id"],
        width=w,
        height=h,
        masks=[mask_from_json(m, h, w) for m in body.get("masks", [])],
        mask_input_id=body.get("mask_input_id"),
        mask_input_ids=list(body.get("mask_input_ids", [])),
    )


def everything_from_json(body: dict) -> EverythingResult:
    h, w = int(body["height"]), int(body["width"])
    masks = [mask_from_json(m, h, w) for m in body.get("masks", [])]
    return EverythingResult(body["image_id"], w, h, masks)


def embed_from_json(body: dict) -> EmbedResult:
    return EmbedResult(
        body["image_id"],
        int(body["width"]),
        int(body["height"]),
        bool(body["cached"]),
        int(body["expires_in"]),
    )


def mask_from_pb(m: Any, height: int, width: int) -> Mask:
    """A gRPC Mask or EverythingMask message (they share these fields)."""
    rle = Rle((int(m.rle.size[0]), int(m.rle.size[1])), m.rle.counts) if m.HasField("rle") else None
    point = None
    if hasattr(m, "point") and m.HasField("point"):
        point = (float(m.point.x), float(m.point.y))
    return Mask(
        score=float(m.score),
        stability_score=float(m.stability_score),
        bbox=(m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height),
        area=int(m.area),
        height=height,
        width=width,
        rle=rle,
        png=bytes(m.png) or None,
        polygons=[list(p.xy) for p in m.polygons] or None,
        prompt_index=int(getattr(m, "prompt_index", 0)),
        mask_index=int(getattr(m, "mask_index", 0)),
        point=point,
    )


def segment_from_pb(m: Any) -> SegmentResult:
    h, w = int(m.height), int(m.width)
    return SegmentResult(
        image_id=m.image_id,
        width=w,
        height=h,
        masks=[mask_from_pb(x, h, w) for x in m.masks],
        mask_input_id=m.mask_input_id or None,
        mask_input_ids=list(m.mask_input_ids),
    )


def everything_from_pb(m: Any) -> EverythingResult:
    h, w = int(m.height), int(m.width)
    masks = [mask_from_pb(x, h, w) for x in m.masks]
    return EverythingResult(m.image_id, w, h, masks)


def embed_from_pb(m: Any) -> EmbedResult:
    return EmbedResult(m.image_id, m.width, m.height, m.cached, m.expires_in)
