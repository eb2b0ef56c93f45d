"""Images in, masks out: image decoding with format sniffing, EXIF orientation and size/bomb
checks; masks as COCO RLE (pycocotools), base64 PNG and polygons (cv2.findContours)."""

from __future__ import annotations

import base64
import hashlib
import io
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

ACCEPTED_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
# Types that say nothing about the format; the bytes are sniffed instead.
GENERIC_TYPES = {"", "application/octet-stream"}

# PIL's own bomb guard stays on: Image.open raises DecompressionBombError beyond twice this
# many pixels, and only warns beyond it; decode_image refuses beyond it itself
# (_check_bomb_limit), without touching the process's warning filters, which are global and
# not thread-safe to change (images decode on several threads).
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 89_478_485)


# 16-bit greyscale PNGs open in these modes ("I" in older Pillow releases); convert("RGB")
# clips them at 255, which turns nearly every pixel white.
WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit greyscale by its high byte, as PIL reads 16-bit colour PNGs."""
    wide = np.asarray(image).astype(np.int64)
    return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))  # 2-D uint8: mode L


def content_hash(data: bytes) -> str:
    """The image_id: sha256 of the bytes as sent."""
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str | None:
    """JPEG, PNG or WEBP from the magic bytes; None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_content_type(content_type: str | None) -> None:
    """Refuse declared types other than the three accepted (or a generic/absent one)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in ACCEPTED_TYPES and media not in GENERIC_TYPES:
        raise UnsupportedMediaType(
            f"content type {quoted_media(media)} is not accepted; "
            "send image/jpeg, image/png or image/webp"
        )


def quoted_media(media: str) -> str:
    """A client's media type for an error message, cut short: the error stays small enough
    for gRPC's trailing metadata and a log line however long the header was."""
    return repr(media if len(media) <= 80 else media[:80] + "...")


BOMB_MESSAGE = "the image exceeds the decompression size limit"


def _check_bomb_limit(width: int, height: int) -> None:
    """PIL's decompression-bomb rule (Image._decompression_bomb_check), refusing where PIL
    would only warn: more than Image.MAX_IMAGE_PIXELS pixels is ImageTooLarge."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageTooLarge(BOMB_MESSAGE)


def decode_image(data: bytes, content_type: str | None, max_pixels: int) -> np.ndarray:
    """Bytes -> uint8 HxWx3 RGB with EXIF orientation applied (width, height and prompt
    coordinates are the upright image's). Alpha is ignored (the colour channels as stored),
    animations give their first frame, 16-bit images are scaled to 8 bits.

    Raises UnsupportedMediaType (not JPEG/PNG/WebP), ImageTooLarge (pixel count or
    decompression bomb, checked from the header before any pixel is decoded) and
    InvalidImage (empty, truncated or corrupt)."""
    check_content_type(content_type)
    if not data:
        raise InvalidImage("the image is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType("the bytes are not a JPEG, PNG or WebP image")
    try:
        # Reads the header only. PIL may warn (DecompressionBombWarning) through the process's
        # filters here, or raise it where they make it an error; either way it is refused.
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width < 1 or height < 1:
            raise InvalidImage("the image has no pixels")
        _check_bomb_limit(width, height)
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image has {width}x{height} pixels; at most {max_pixels} are accepted"
            )
        image = ImageOps.exif_transpose(image) or image
        if image.mode in WIDE_GREY_MODES:
            image = _wide_grey_to_l(image)
        rgb = np.asarray(image.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(BOMB_MESSAGE) from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as exc:
        raise InvalidImage(f"the {fmt} image is truncated or corrupt") from exc
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidImage("the image could not be converted to 8-bit RGB")
    return np.ascontiguousarray(rgb)


def encode_png_rgb(image: np.ndarray) -> bytes:
    """uint8 HxWx3 RGB -> lossless PNG bytes (tests and benchmarks)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool HxW -> {"size": [h, w], "counts": str}, COCO compressed RLE."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def rle_to_mask(rle: dict) -> np.ndarray:
    """The inverse of mask_to_rle (bool HxW)."""
    coco = {"size": list(rle["size"]), "counts": rle["counts"].encode()}
    return mask_utils.decode(coco).astype(bool)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """[x, y, w, h] of the set pixels; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def mask_to_png_base64(mask: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode()


class PolygonOptions(NamedTuple):
    """How masks become polygons (see docs/api.md, "Polygons").

    tolerance: Douglas-Peucker tolerance in pixels (cv2.approxPolyDP); 0 keeps every corner
    of the traced outline. min_area: parts (8-connected regions) and holes (4-connected
    background enclosed by a part) of fewer pixels are dropped (a dropped hole is filled).
    largest_only: keep the part with the most pixels only."""

    tolerance: float = 0.0
    min_area: int = 0
    largest_only: bool = False


DEFAULT_POLYGON_OPTIONS = PolygonOptions()


def clean_mask(mask: np.ndarray, options: PolygonOptions) -> np.ndarray:
    """The mask the polygons trace: small parts removed, small holes filled, or the largest
    part only. Unchanged (the same array) when no option asks for anything."""
    if options.min_area <= 0 and not options.largest_only:
        return mask
    out = mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, dtype=bool)
    keep[1:] = areas >= max(options.min_area, 1)
    if options.largest_only and areas.size:
        largest = 1 + int(np.argmax(areas))
        keep[:] = False
        keep[largest] = areas[largest - 1] >= max(options.min_area, 1)
    out = keep[labels].astype(np.uint8)
    if options.min_area > 0:
        # Holes: background regions (4-connected, the dual of 8-connected parts) that do not
        # touch the image border.
        count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - out, connectivity=4)
        h, w = out.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)
        small = inner & (stats[:, cv2.CC_STAT_AREA] < options.min_area)
        small[0] = False  # label 0 is the mask's own pixels
        fill = small[labels] & (out == 0)
        out[fill] = 1
    return out.astype(bool)


def _ring(contour: np.ndarray, tolerance: float) -> list[float] | None:
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, float(tolerance), True)
    if len(contour) < 3:
        return None
    return [float(v) for v in contour.reshape(-1)]


def mask_to_polygon_parts(
    mask: np.ndarray, options: PolygonOptions = DEFAULT_POLYGON_OPTIONS
) -> list[tuple[list[float], list[list[float]]]]:
    """The mask as polygons with holes: one (exterior, [hole, ...]) per part, each ring
    flattened [x0, y0, x1, y1, ...] (pixel centres of the outline, 3+ points), parts in
    cv2.findContours order. A part inside another part's hole is a part of its own."""
    cleaned = clean_mask(mask, options)
    contours, hierarchy = cv2.findContours(
        cleaned.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    tree = hierarchy[0]  # per contour: next, previous, first child, parent
    parts = []
    for i, contour in enumerate(contours):
        if tree[i][3] != -1:
            continue  # a hole: collected with its parent below
        exterior = _ring(contour, options.tolerance)
        if exterior is None:
            continue
        holes = []
        child = int(tree[i][2])
        while child != -1:
            hole = _ring(contours[child], options.tolerance)
            if hole is not None:
                holes.append(hole)
            child = int(tree[child][0])
        parts.append((exterior, holes))
    return parts


def mask_to_polygons(
    mask: np.ndarray, options: PolygonOptions = DEFAULT_POLYGON_OPTIONS
) -> list[list[float]]:
    """Outer contours of the mask, each flattened [x0, y0, x1, y1, ...] (3+ points)."""
    return [exterior for exterior, _ in mask_to_polygon_parts(mask, options)]


def polygon_parts_to_mask(
    parts: list[tuple[list[float], list[list[float]]]], height: int, width: int
) -> np.ndarray:
    """Rasterise polygons with holes (the inverse of mask_to_polygon_parts up to the
    simplification): exteriors filled, then holes cleared, outlines included."""
    out = np.zeros((height, width), dtype=bool)
    for exterior, holes in parts:  # each part on its own: an island may sit in a hole
        part = np.zeros((height, width), dtype=np.uint8)
        cv2.drawContours(part, [_int_ring(exterior)], -1, 1, thickness=cv2.FILLED)
        for hole in holes:
            # the hole ring runs along mask pixels: clear its inside, then redraw the ring
            cv2.drawContours(part, [_int_ring(hole)], -1, 0, thickness=cv2.FILLED)
            cv2.drawContours(part, [_int_ring(hole)], -1, 1, thickness=1)
        out |= part.astype(bool)
    return out


def _int_ring(ring: list[float]) -> np.ndarray:
    return np.asarray(ring, dtype=np.float64).reshape(-1, 1, 2).round().astype(np.int32)


def encode_mask(
    mask: np.ndarray,
    formats: list[str] | tuple[str, ...],
    polygon_options: PolygonOptions = DEFAULT_POLYGON_OPTIONS,
) -> dict:
    """The requested encodings of one mask plus bbox and area. Polygons come as `polygons`
    (exterior rings) and `holes` (for each exterior, its hole rings)."""
    out: dict = {"bbox": mask_bbox(mask), "area": int(np.count_nonzero(mask))}
    if "rle" in formats:
        out["rle"] = mask_to_rle(mask)
    if "png" in formats:
        out["png"] = mask_to_png_base64(mask)
    if "polygons" in formats:
        parts = mask_to_polygon_parts(mask, polygon_options)
        out["polygons"] = [exterior for exterior, _ in parts]
        out["holes"] = [holes for _, holes in parts]
    return out
