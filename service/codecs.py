"""Images in, masks out: image decoding with format sniffing, EXIF orientation and size/bomb
checks; masks as COCO RLE (pycocotools), base64 PNG and polygons (cv2.findContours)."""

from __future__ import annotations

import base64
import hashlib
import io

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


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of the mask, each flattened [x0, y0, x1, y1, ...] (3+ points)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    out = []
    for contour in contours:
        if len(contour) >= 3:
            out.append([float(v) for v in contour.reshape(-1)])
    return out


def encode_mask(mask: np.ndarray, formats: list[str] | tuple[str, ...]) -> dict:
    """The requested encodings of one mask plus bbox and area."""
    out: dict = {"bbox": mask_bbox(mask), "area": int(np.count_nonzero(mask))}
    if "rle" in formats:
        out["rle"] = mask_to_rle(mask)
    if "png" in formats:
        out["png"] = mask_to_png_base64(mask)
    if "polygons" in formats:
        out["polygons"] = mask_to_polygons(mask)
    return out
