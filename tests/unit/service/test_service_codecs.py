import base64
import io
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from service import codecs
from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType


def _encode(image: np.ndarray, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "fmt,ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_decodes_the_three_formats(image: np.ndarray, fmt: str, ctype: str) -> None:
    data = _encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    out = codecs.decode_image(data, ctype, 10_000)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    if fmt != "JPEG":
        np.testing.assert_array_equal(out, image)


def test_exif_orientation_is_applied(image: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(image, "JPEG", exif=exif.tobytes())
    out = codecs.decode_image(data, "image/jpeg", 10_000)
    assert out.shape == (40, 30, 3)


def test_16_bit_images_are_scaled_to_8_bits() -> None:
    """Greyscale as colour: by the high byte (PIL's convert alone clips grey at 255: white)."""
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    out = codecs.decode_image(_encode(grey, "PNG"), "image/png", 10_000)
    np.testing.assert_array_equal(out, np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, 2))
    colour = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    ok, png = cv2.imencode(".png", colour[..., ::-1])  # cv2 writes BGR
    out = codecs.decode_image(png.tobytes(), "image/png", 10_000)
    np.testing.assert_array_equal(out, (colour >> 8).astype(np.uint8))


def test_other_formats_are_415(image: np.ndarray) -> None:
    with pytest.raises(UnsupportedMediaType):
        codecs.decode_image(_encode(image, "GIF"), None, 10_000)
    with pytest.raises(UnsupportedMediaType):
        codecs.decode_image(_encode(image, "PNG"), "image/gif", 10_000)
    with pytest.raises(UnsupportedMediaType):
        codecs.decode_image(b"%PDF-1.4 not an image", None, 10_000)


def test_truncated_and_corrupt_images(image: np.ndarray) -> None:
    data = _encode(image, "PNG")
    with pytest.raises(InvalidImage):
        codecs.decode_image(data[: len(data) // 2], "image/png", 10_000)
    with pytest.raises(InvalidImage):
        codecs.decode_image(b"", "image/png", 10_000)
    corrupt = bytearray(_encode(image, "JPEG"))
    corrupt[200:] = b"\x00" * (len(corrupt) - 200)
    with pytest.raises(InvalidImage):
        codecs.decode_image(bytes(corrupt)[:300], "image/jpeg", 10_000)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_limit_and_bombs_are_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        codecs.decode_image(_png_header_only(100, 101), "image/png", 100 * 100)
    # A decompression bomb: tiny file, 60000x60000 pixels declared.
    with pytest.raises(ImageTooLarge):
        codecs.decode_image(_png_header_only(60_000, 60_000), "image/png", 10**12)


@pytest.mark.parametrize("action", ["default", "ignore", "error"])
def test_pil_bomb_band_is_refused_whatever_the_warning_filters(action: str) -> None:
    """Between Image.MAX_IMAGE_PIXELS and twice that, PIL only warns: refused all the same,
    as image_too_large, with a configured limit above it, whatever the process's filters make
    of PIL's warning (ignored, shown, or raised)."""
    limit = Image.MAX_IMAGE_PIXELS
    assert limit is not None
    side = int(limit**0.5) + 1  # side * side is just over the limit, under twice it
    with warnings.catch_warnings(record=True) as caught:  # the test's own filters
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLarge, match="decompression") as info:
            codecs.decode_image(_png_header_only(side, side), "image/png", 10**12)
    assert info.value.code == "image_too_large"
    shown = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert len(shown) == (1 if action == "default" else 0)


def test_decoding_never_touches_the_warning_filters(
    image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """warnings.filters is process-wide and decode_image runs on several threads: it must not
    change it, even for the duration of a decode (warnings.catch_warnings would)."""
    before = list(warnings.filters)
    seen: list[list] = []
    real_open = Image.open

    def watching_open(*args: object, **kwargs: object) -> Image.Image:
        seen.append(list(warnings.filters))
        return real_open(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(codecs.Image, "open", watching_open)
    out = codecs.decode_image(_encode(image, "PNG"), "image/png", 10_000)
    assert out.shape == (30, 40, 3)
    with pytest.raises(ImageTooLarge) as info:
        codecs.decode_image(_png_header_only(100, 101), "image/png", 100 * 100)
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageTooLarge):
        codecs.decode_image(_png_header_only(60_000, 60_000), "image/png", 10**12)
    assert len(seen) == 3
    assert all(filters == before for filters in seen)
    assert list(warnings.filters) == before


def test_concurrent_decodes_leave_the_warning_filters_as_they_were(image: np.ndarray) -> None:
    before = list(warnings.filters)
    good = _encode(image, "PNG")
    bomb = _png_header_only(60_000, 60_000)

    def one(i: int) -> str:
        try:
            codecs.decode_image(bomb if i % 2 else good, "image/png", 10_000)
        except ImageTooLarge as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(200)))
    assert got == ["ok", "image_too_large"] * 100
    assert list(warnings.filters) == before


def test_rle_is_readable_by_pycocotools() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 5:17] = True
    rle = codecs.mask_to_rle(mask)
    assert rle["size"] == [20, 30] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(codecs.rle_to_mask(rle), mask)


def test_png_polygons_bbox_area() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:9, 5:17] = True
    out = codecs.encode_mask(mask, ["rle", "png", "polygons"])
    assert out["bbox"] == (5, 3, 12, 6)
    assert out["area"] == 72
    png = cv2.imdecode(np.frombuffer(base64.b64decode(out["png"]), np.uint8), 0)
    np.testing.assert_array_equal(png > 0, mask)
    assert len(out["polygons"]) == 1
    xs = out["polygons"][0][0::2]
    ys = out["polygons"][0][1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (5, 16, 3, 8)
    assert codecs.mask_bbox(np.zeros((4, 4), bool)) == (0, 0, 0, 0)
    assert "png" not in codecs.encode_mask(mask, ["rle"])
