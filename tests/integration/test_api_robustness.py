"""Odd, bad and hostile input over both transports (one fake-backend service, HTTP and gRPC
on loopback, a real Redis): odd-but-valid images and prompts work, everything else answers
its documented status and stable code, never a 500 or a stack trace, and the cache keeps
what it had."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator

import cv2
import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from engine.backends.base import BackendError
from service.fake_backend import FakeBackend
from service.schemas import EmbedResult, ErrorBody, EverythingResult, Readiness, SegmentResult
from tests.conftest import delete_prefix
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image
from tests.integration.grpc_util import BothTransports

start_grpc_service = grpc_util.start_grpc_service  # the fixture

MAX_PIXELS = 20_000
LIMITS = {"max_image_pixels": MAX_PIXELS, "max_points": 8, "max_boxes": 4}
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def both(redis_url: str) -> Iterator[BothTransports]:
    prefix = f"edgesam-test:{uuid.uuid4().hex[:12]}:"
    running = grpc_util.start_both(
        redis_url=redis_url, redis_key_prefix=prefix, cache_dtype="float32", **LIMITS
    )
    try:
        yield running
    finally:
        grpc_util.stop_both(running)
        delete_prefix(redis_url, prefix)


def http_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    assert body["message"] and "Traceback" not in body["message"]


def grpc_error(call: Callable[[], object], status: grpc.StatusCode, code: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    exc = info.value
    assert exc.code() == status, (exc.code(), exc.details())
    assert dict(exc.trailing_metadata() or ()).get("edgesam-error-code") == code, exc.details()
    assert exc.details() and "Traceback" not in exc.details()


# -- images ----------------------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 40, w: int = 50) -> Image.Image:
    return Image.fromarray(test_image(h, w, seed=h * 7919 + w))


def _exif6() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 60x40, shown rotated 90 degrees clockwise: 40 wide, 60 high
    return exif.tobytes()


def _palette_with_transparency() -> bytes:
    return _save(_rgb().convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0)


def _png16(channels: int) -> bytes:
    shape = (40, 50) if channels == 1 else (40, 50, channels)
    pixels = np.random.default_rng(channels).integers(0, 65536, shape, dtype=np.uint16)
    return cv2.imencode(".png", pixels)[1].tobytes()


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(test_image(30, 30, seed=i)) for i in range(3)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:])


PNG_BYTES = png_bytes(test_image(40, 50))

# name -> (bytes, content type, (width, height) answered)
GOOD_IMAGES: dict[str, tuple[Callable[[], bytes], str, tuple[int, int]]] = {
    "grey L": (lambda: _save(_rgb().convert("L"), "PNG"), "image/png", (50, 40)),
    "grey + alpha LA": (lambda: _save(_rgb().convert("LA"), "PNG"), "image/png", (50, 40)),
    "palette + transparency": (_palette_with_transparency, "image/png", (50, 40)),
    "RGBA": (lambda: _save(_rgb().convert("RGBA"), "PNG"), "image/png", (50, 40)),
    "1-bit": (lambda: _save(_rgb().convert("1"), "PNG"), "image/png", (50, 40)),
    "16-bit grey": (lambda: _png16(1), "image/png", (50, 40)),
    "16-bit RGB": (lambda: _png16(3), "image/png", (50, 40)),
    "16-bit RGBA": (lambda: _png16(4), "image/png", (50, 40)),
    "CMYK JPEG": (lambda: _save(_rgb().convert("CMYK"), "JPEG"), "image/jpeg", (50, 40)),
    "grey JPEG": (lambda: _save(_rgb().convert("L"), "JPEG"), "image/jpeg", (50, 40)),
    "progressive JPEG": (lambda: _save(_rgb(), "JPEG", progressive=True), "image/jpeg", (50, 40)),
    "EXIF 6 JPEG": (lambda: _save(_rgb(40, 60), "JPEG", exif=_exif6()), "image/jpeg", (40, 60)),
    "EXIF 6 PNG": (lambda: _save(_rgb(40, 60), "PNG", exif=_exif6()), "image/png", (40, 60)),
    "EXIF 6 WebP": (lambda: _save(_rgb(40, 60), "WEBP", exif=_exif6()), "image/webp", (40, 60)),
    "WebP": (lambda: _save(_rgb(), "WEBP"), "image/webp", (50, 40)),
    "WebP lossless RGBA": (
        lambda: _save(_rgb().convert("RGBA"), "WEBP", lossless=True),
        "image/webp",
        (50, 40),
    ),
    "animated WebP (first frame)": (lambda: _animated("WEBP"), "image/webp", (30, 30)),
    "APNG (first frame)": (lambda: _animated("PNG"), "image/png", (30, 30)),
    "1x1": (lambda: _save(_rgb(1, 1), "PNG"), "image/png", (1, 1)),
    "1 high, 7 wide": (lambda: _save(_rgb(1, 7), "PNG"), "image/png", (7, 1)),
    "4000x3": (lambda: _save(_rgb(3, 4000), "PNG"), "image/png", (4000, 3)),
    "3x4000": (lambda: _save(_rgb(4000, 3), "PNG"), "image/png", (3, 4000)),
    "1x3000 strip": (lambda: _save(_rgb(1, 3000), "PNG"), "image/png", (3000, 1)),
    "3000x1 strip": (lambda: _save(_rgb(3000, 1), "PNG"), "image/png", (1, 3000)),
    "at the pixel limit": (lambda: _save(_rgb(100, 200), "PNG"), "image/png", (200, 100)),
    "PNG declared as JPEG": (lambda: PNG_BYTES, "image/jpeg", (50, 40)),
    "type with parameters": (lambda: PNG_BYTES, "image/png; charset=binary", (50, 40)),
}

# name -> (bytes, content type, HTTP status, code); gRPC answers INVALID_ARGUMENT throughout
BAD_IMAGES: dict[str, tuple[Callable[[], bytes], str, int, str]] = {
    "empty": (lambda: b"", "image/png", 400, "invalid_image"),
    "truncated PNG": (lambda: PNG_BYTES[: len(PNG_BYTES) // 2], "image/png", 400, "invalid_image"),
    "truncated JPEG": (
        lambda: _save(_rgb(), "JPEG")[:200],
        "image/jpeg",
        400,
        "invalid_image",
    ),
    "PNG signature only": (lambda: PNG_BYTES[:8], "image/png", 400, "invalid_image"),
    "above the pixel limit": (
        lambda: _save(_rgb(101, 200), "PNG"),
        "image/png",
        413,
        "image_too_large",
    ),
    "text": (lambda: b"hello, not an image", "image/png", 415, "unsupported_media_type"),
    "animated GIF": (lambda: _animated("GIF"), "image/gif", 415, "unsupported_media_type"),
    "GIF declared as PNG": (lambda: _animated("GIF"), "image/png", 415, "unsupported_media_type"),
    "base64 PNG": (
        lambda: base64.b64encode(PNG_BYTES),
        "image/png",
        415,
        "unsupported_media_type",
    ),
    "data: URL": (
        lambda: b"data:image/png;base64," + base64.b64encode(PNG_BYTES),
        "image/png",
        415,
        "unsupported_media_type",
    ),
    "BMP": (lambda: _save(_rgb(), "BMP"), "image/png", 415, "unsupported_media_type"),
}


def _segment_both(both: BothTransports, image_id: str, x: float, y: float) -> list[dict]:
    """The same point over HTTP and gRPC; the HTTP masks (RLE) after checking gRPC agrees."""
    r = both.http.post(
        "/v1/segment",
        json={"image_id": image_id, "points": [[x, y]], "labels": [1], "output": ["rle", "png"]},
    )
    assert r.status_code == 200, r.text
    masks = r.json()["masks"]
    g = both.stub.Segment(
        pb.SegmentRequest(image_id=image_id, points=[pb.Point(x=x, y=y)], labels=[1]), timeout=30
    )
    assert [m.rle.counts for m in g.masks] == [m["rle"]["counts"] for m in masks]
    return masks


@pytest.mark.parametrize("name", list(GOOD_IMAGES))
def test_odd_but_valid_images_embed_and_segment(both: BothTransports, name: str) -> None:
    make, content_type, (w, h) = GOOD_IMAGES[name]
    data = make()
    r = both.http.post("/v1/embed", content=data, headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (w, h)
    g = both.stub.Embed(pb.EmbedRequest(image=data, content_type=content_type), timeout=30)
    assert (g.image_id, g.width, g.height, g.cached) == (body["image_id"], w, h, True)
    # prompts anywhere in [0, width] x [0, height], the far corner included
    for x, y in ((w, h), (w / 2, h / 2), (0, 0)):
        for mask in _segment_both(both, body["image_id"], x, y):
            assert mask["rle"]["size"] == [h, w]


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_are_refused_with_their_code(both: BothTransports, name: str) -> None:
    make, content_type, status, code = BAD_IMAGES[name]
    data = make()
    http_error(
        both.http.post("/v1/embed", content=data, headers={"content-type": content_type}),
        status,
        code,
    )
    http_error(
        both.http.post("/v1/embed", files={"file": ("upload", data, content_type)}), status, code
    )
    grpc_error(
        lambda: both.stub.Embed(pb.EmbedRequest(image=data, content_type=content_type), timeout=30),
        INVALID,
        code,
    )


def test_exif_orientation_is_the_frame_of_every_answer(both: BothTransports) -> None:
    """Coordinates, masks and sizes are the upright image's: the stored 60x40 pixels shown
    as 40 wide, 60 high; a point beyond 40 in x is outside."""
    data = GOOD_IMAGES["EXIF 6 JPEG"][0]()
    image_id = both.http.post(
        "/v1/embed", content=data, headers={"content-type": "image/jpeg"}
    ).json()["image_id"]
    masks = _segment_both(both, image_id, 40, 60)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(masks[0]["png"]), np.uint8), 0)
    assert png.shape == (60, 40)
    r = both.http.post(
        "/v1/segment", json={"image_id": image_id, "points": [[50, 10]], "labels": [1]}
    )
    http_error(r, 422, "invalid_prompt")


# -- prompts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_id(both: BothTransports) -> str:
    r = both.http.post("/v1/embed", content=PNG_BYTES, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()["image_id"]  # 50 wide, 40 high


def _pts(*xy: tuple[float, float]) -> list[pb.Point]:
    return [pb.Point(x=x, y=y) for x, y in xy]


def _box(x0: float, y0: float, x1: float, y1: float) -> pb.Box:
    return pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)


# name -> (HTTP body fields, gRPC SegmentRequest fields or None, masks answered)
GOOD_PROMPTS: dict[str, tuple[dict, dict | None, int]] = {
    "far corner": ({"points": [[50, 40]], "labels": [1]}, {"points": _pts((50, 40))}, 1),
    "origin": ({"points": [[0, 0]], "labels": [1]}, {"points": _pts((0, 0))}, 1),
    "minus zero": ({"points": [[-0.0, 0]], "labels": [1]}, {"points": _pts((-0.0, 0))}, 1),
    "background only": ({"points": [[9, 9]], "labels": [0]}, None, 1),
    "whole-image box": ({"box": [0, 0, 50, 40]}, {"box": _box(0, 0, 50, 40)}, 1),
    "tiny box": ({"box": [1, 1, 1.001, 1.001]}, {"box": _box(1, 1, 1.001, 1.001)}, 1),
    "max points": ({"points": [[1, 1]] * 8, "labels": [1] * 8}, {"points": _pts(*[(1, 1)] * 8)}, 1),
    "max boxes, 3 masks": (
        {"boxes": [[0, 0, 9, 9]] * 4, "num_masks": 3},
        {"boxes": [_box(0, 0, 9, 9)] * 4, "num_masks": 3},
        12,
    ),
    "box and points, 4 masks": (
        {"box": [0, 0, 20, 20], "points": [[2, 2], [3, 3]], "labels": [1, 0], "num_masks": 4},
        None,
        4,
    ),
    "boxes share the points": (
        {"boxes": [[0, 0, 9, 9], [5, 5, 30, 30]], "points": [[6, 6]], "labels": [1]},
        None,
        2,
    ),
}

# name -> (HTTP body fields, gRPC SegmentRequest fields or None, code); every one 422 /
# INVALID_ARGUMENT
BAD_PROMPTS: dict[str, tuple[dict, dict | None, str]] = {
    "x just past the width": (
        {"points": [[50.001, 1]], "labels": [1]},
        {"points": _pts((50.001, 1)), "labels": [1]},
        "invalid_prompt",
    ),
    "y just past the height": (
        {"points": [[1, 40.001]], "labels": [1]},
        {"points": _pts((1, 40.001)), "labels": [1]},
        "invalid_prompt",
    ),
    "negative": (
        {"points": [[-1, 1]], "labels": [1]},
        {"points": _pts((-1, 1)), "labels": [1]},
        "invalid_prompt",
    ),
    "huge": (
        {"points": [[1e308, 1]], "labels": [1]},
        {"points": _pts((1e308, 1)), "labels": [1]},
        "invalid_prompt",
    ),
    "infinite": (None, {"points": _pts((float("inf"), 1)), "labels": [1]}, "invalid_prompt"),
    "empty points": ({"points": [], "labels": []}, {}, "invalid_prompt"),
    "points without labels": (
        {"points": [[1, 1]]},
        {"points": _pts((1, 1))},
        "invalid_prompt",
    ),
    "labels without points": ({"labels": [1]}, {"labels": [1]}, "invalid_prompt"),
    "more points than labels": (
        {"points": [[1, 1], [2, 2]], "labels": [1]},
        {"points": _pts((1, 1), (2, 2)), "labels": [1]},
        "invalid_prompt",
    ),
    "too many points": (
        {"points": [[1, 1]] * 9, "labels": [1] * 9},
        {"points": _pts(*[(1, 1)] * 9), "labels": [1] * 9},
        "invalid_prompt",
    ),
    "too many boxes": (
        {"boxes": [[0, 0, 5, 5]] * 5},
        {"boxes": [_box(0, 0, 5, 5)] * 5},
        "invalid_prompt",
    ),
    "inverted box": ({"box": [10, 1, 5, 5]}, {"box": _box(10, 1, 5, 5)}, "invalid_prompt"),
    "point box": ({"box": [5, 5, 5, 5]}, {"box": _box(5, 5, 5, 5)}, "invalid_prompt"),
    "zero-width box": ({"box": [5, 1, 5, 9]}, {"box": _box(5, 1, 5, 9)}, "invalid_prompt"),
    "box past the edge": ({"box": [0, 0, 51, 40]}, {"box": _box(0, 0, 51, 40)}, "invalid_prompt"),
    "box and boxes": (
        {"box": [0, 0, 5, 5], "boxes": [[0, 0, 5, 5]]},
        {"box": _box(0, 0, 5, 5), "boxes": [_box(0, 0, 5, 5)]},
        "invalid_prompt",
    ),
    "empty boxes": ({"boxes": []}, None, "invalid_prompt"),
    "label -1": (
        {"points": [[1, 1]], "labels": [-1]},
        {"points": _pts((1, 1)), "labels": [-1]},
        "invalid_request",
    ),
    "label 2 (a box corner)": (
        {"points": [[1, 1]], "labels": [2]},
        {"points": _pts((1, 1)), "labels": [2]},
        "invalid_request",
    ),
    "label 0.5": ({"points": [[1, 1]], "labels": [0.5]}, None, "invalid_request"),
    "three coordinates": ({"points": [[1, 1, 1]], "labels": [1]}, None, "invalid_request"),
    "box of three": ({"box": [0, 0, 5]}, None, "invalid_request"),
    "num_masks 2": (
        {"box": [0, 0, 5, 5], "num_masks": 2},
        {"box": _box(0, 0, 5, 5), "num_masks": 2},
        "invalid_request",
    ),
    "num_masks 0": (
        {"box": [0, 0, 5, 5], "num_masks": 0},
        {"box": _box(0, 0, 5, 5), "num_masks": 0},
        "invalid_request",
    ),
    "no output": ({"box": [0, 0, 5, 5], "output": []}, None, "invalid_request"),
    "mask_input instead of an id": (
        {"box": [0, 0, 5, 5], "mask_input": [[0.0] * 4] * 4},
        None,
        "invalid_request",
    ),
    "mask_input_id not hex": (
        {"box": [0, 0, 5, 5], "mask_input_id": "G" * 32},
        {"box": _box(0, 0, 5, 5), "mask_input_id": "G" * 32},
        "invalid_request",
    ),
}


def _grpc_request(image_id: str, fields: dict) -> pb.SegmentRequest:
    fields = dict(fields)
    if "points" in fields:
        fields.setdefault("labels", [1] * len(fields["points"]))
    return pb.SegmentRequest(image_id=image_id, **fields)


@pytest.mark.parametrize("name", list(GOOD_PROMPTS))
def test_odd_but_valid_prompts(both: BothTransports, image_id: str, name: str) -> None:
    body, fields, count = GOOD_PROMPTS[name]
    r = both.http.post("/v1/segment", json={"image_id": image_id, **body})
    assert r.status_code == 200, r.text
    assert len(r.json()["masks"]) == count
    if fields is not None:
        assert len(both.stub.Segment(_grpc_request(image_id, fields), timeout=30).masks) == count


@pytest.mark.parametrize("name", list(BAD_PROMPTS))
def test_bad_prompts_are_refused_with_their_code(
    both: BothTransports, image_id: str, name: str
) -> None:
    body, fields, code = BAD_PROMPTS[name]
    if body is not None:
        http_error(both.http.post("/v1/segment", json={"image_id": image_id, **body}), 422, code)
    if fields is not None:
        request = pb.SegmentRequest(image_id=image_id, **fields)
        grpc_error(lambda: both.stub.Segment(request, timeout=30), INVALID, code)


@pytest.mark.parametrize(
    "literal", ["NaN", "Infinity", "-Infinity", "1e400"], ids=["nan", "inf", "-inf", "1e400"]
)
def test_non_finite_json_numbers_are_invalid_prompts(
    both: BothTransports, image_id: str, literal: str
) -> None:
    """Python's json (under FastAPI) reads these as floats; they are refused all the same."""
    for body in (
        f'{{"image_id": "{image_id}", "points": [[{literal}, 1]], "labels": [1]}}',
        f'{{"image_id": "{image_id}", "box": [0, 0, {literal}, 5]}}',
    ):
        http_error(both.http.post("/v1/segment", content=body, headers=JSON), 422, "invalid_prompt")


@pytest.mark.parametrize(
    "content,headers,status,code",
    [
        ("", JSON, 422, "invalid_request"),
        ("{not json", JSON, 422, "invalid_request"),
        ("[1, 2]", JSON, 422, "invalid_request"),
        ("null", JSON, 422, "invalid_request"),
        ("[" * 100_000 + "]" * 100_000, JSON, 422, "invalid_request"),
        ('{"points": [[' + "9" * 5000 + ", 1]]}", JSON, 422, "invalid_request"),
        # JSON sent without its content type (curl -d sends a form type)
        (
            "{}",
            {"content-type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        ("{}", {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        ("{}", {}, 415, "unsupported_media_type"),
        ("{not json", {}, 415, "unsupported_media_type"),
    ],
    ids=[
        "empty",
        "not json",
        "array",
        "null",
        "deep",
        "long int",
        "form",
        "text",
        "no type",
        "no type, not json",
    ],
)
def test_bodies_that_are_not_a_request(
    both: BothTransports, image_id: str, content: str, headers: dict, status: int, code: str
) -> None:
    content = content.replace("{}", json.dumps({"image_id": image_id, "box": [0, 0, 5, 5]}))
    r = both.http.post("/v1/segment", content=content, headers=headers)
    http_error(r, status, code)
    if content == "":
        assert "empty" in r.json()["message"]


def assert_embedding_not_found(both: BothTransports, image_id: str) -> None:
    http_error(
        both.http.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5]}),
        404,
        "embedding_not_found",
    )
    grpc_error(
        lambda: both.stub.Segment(pb.SegmentRequest(image_id=image_id, box=_box(0, 0, 5, 5))),
        NOT_FOUND,
        "embedding_not_found",
    )


def test_unknown_deleted_and_foreign_ids(both: BothTransports, image_id: str) -> None:
    assert_embedding_not_found(both, "0" * 64)
    for bad in ("", "short", "g" * 64, image_id + "0"):
        grpc_error(
            lambda bad=bad: both.stub.Segment(
                pb.SegmentRequest(image_id=bad, box=_box(0, 0, 5, 5))
            ),
            INVALID,
            "invalid_request",
        )
    http_error(both.http.post("/v1/segment", json={"box": [0, 0, 5, 5]}), 422, "invalid_request")
    # a mask of another image is not a refinement of this one
    other = png_bytes(test_image(30, 20, seed=5))
    other_id = both.http.post(
        "/v1/embed", content=other, headers={"content-type": "image/png"}
    ).json()["image_id"]
    foreign = both.http.post(
        "/v1/segment", json={"image_id": other_id, "box": [0, 0, 10, 10]}
    ).json()["mask_input_id"]
    own = both.http.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 10, 10]}).json()[
        "mask_input_id"
    ]
    body = {"image_id": image_id, "box": [0, 0, 10, 10], "mask_input_id": own}
    assert both.http.post("/v1/segment", json=body).status_code == 200
    body["mask_input_id"] = foreign
    http_error(both.http.post("/v1/segment", json=body), 404, "mask_input_not_found")
    request = pb.SegmentRequest(image_id=image_id, box=_box(0, 0, 10, 10), mask_input_id=foreign)
    grpc_error(lambda: both.stub.Segment(request, timeout=30), NOT_FOUND, "mask_input_not_found")
    # deleted: as unknown, on both transports, with its refinement ids
    assert both.http.delete(f"/v1/embeddings/{other_id}").status_code == 204
    assert_embedding_not_found(both, other_id)


def test_interactive_session_refuses_bad_steps_and_goes_on(
    both: BothTransports, image_id: str
) -> None:
    steps = [
        pb.InteractiveRequest(click=pb.Click(x=float("nan"), y=1, label=1)),
        pb.InteractiveRequest(click=pb.Click(x=50, y=40, label=1)),  # the far corner
        pb.InteractiveRequest(click=pb.Click(x=1, y=1, label=2)),
        pb.InteractiveRequest(click=pb.Click(x=-1, y=1, label=1)),
        pb.InteractiveRequest(box=_box(9, 9, 1, 1)),
        pb.InteractiveRequest(),
        pb.InteractiveRequest(start=pb.SessionStart(image_id=image_id)),
        pb.InteractiveRequest(click=pb.Click(x=25, y=20, label=0)),
    ]
    start = pb.InteractiveRequest(start=pb.SessionStart(image_id=image_id))
    answers = list(both.stub.InteractiveSegment(iter([start, *steps]), timeout=30))
    got = [
        a.error.code if a.WhichOneof("result") == "error" else len(a.masks.masks)
        for a in answers[1:]
    ]
    assert got == ["invalid_prompt", 1, "invalid_request", "invalid_prompt", "invalid_prompt",
                   "invalid_request", "invalid_request", 1]  # fmt: skip
    strip = pb.InteractiveRequest(start=pb.SessionStart(image=GOOD_IMAGES["1x3000 strip"][0]()))
    click = pb.InteractiveRequest(click=pb.Click(x=3000, y=1, label=1))
    answers = list(both.stub.InteractiveSegment(iter([strip, click]), timeout=30))
    assert (answers[0].started.width, answers[0].started.height) == (3000, 1)
    assert list(answers[1].masks.masks[0].rle.size) == [1, 3000]


def test_bad_input_leaves_the_cache_alone(both: BothTransports) -> None:
    data = png_bytes(test_image(40, 50, seed=11))
    image_id = both.http.post(
        "/v1/embed", content=data, headers={"content-type": "image/png"}
    ).json()["image_id"]
    prompt = {"image_id": image_id, "points": [[20, 20]], "labels": [1]}
    before = both.http.post("/v1/segment", json=prompt).json()["masks"]
    for make, content_type, _, _ in BAD_IMAGES.values():
        both.http.post("/v1/embed", content=make(), headers={"content-type": content_type})
    for body, _, _ in BAD_PROMPTS.values():
        if body is not None:
            both.http.post("/v1/segment", json={"image_id": image_id, **body})
    assert both.http.head(f"/v1/embeddings/{image_id}").status_code == 200
    assert both.http.post("/v1/segment", json=prompt).json()["masks"] == before
    again = both.stub.Embed(pb.EmbedRequest(image=data), timeout=30)
    assert again.cached


def test_expired_embedding_is_not_found_on_both_transports(
    start_grpc_service,  # noqa: ANN001
    redis_url: str,
    redis_prefix: str,
) -> None:
    short = start_grpc_service(
        redis_url=redis_url, redis_key_prefix=redis_prefix, cache_ttl_seconds=1
    )
    image_id = short.http.post(
        "/v1/embed", content=PNG_BYTES, headers={"content-type": "image/png"}
    ).json()["image_id"]
    body = {"image_id": image_id, "box": [0, 0, 5, 5]}
    assert short.http.post("/v1/segment", json=body).status_code == 200
    time.sleep(2.2)
    http_error(short.http.post("/v1/segment", json=body), 404, "embedding_not_found")
    grpc_error(
        lambda: short.stub.Segment(pb.SegmentRequest(image_id=image_id, box=_box(0, 0, 5, 5))),
        NOT_FOUND,
        "embedding_not_found",
    )


# -- strict types ----------------------------------------------------------------------------

# name -> (route, body fields beside image_id, the field the message names); each was coerced
# by pydantic's lax mode (true as 1, "3" as 3, "yes" as true), and each is 422 invalid_request
LAX_TYPES: dict[str, tuple[str, dict, str]] = {
    "label true": ("/v1/segment", {"points": [[10, 20]], "labels": [True]}, "labels"),
    "label false": ("/v1/segment", {"points": [[10, 20]], "labels": [False]}, "labels"),
    "label 1.0": ("/v1/segment", {"points": [[10, 20]], "labels": [1.0]}, "labels"),
    "label '1'": ("/v1/segment", {"points": [[10, 20]], "labels": ["1"]}, "labels"),
    "num_masks true": ("/v1/segment", {"box": [0, 0, 5, 5], "num_masks": True}, "num_masks"),
    "num_masks '3'": ("/v1/segment", {"box": [0, 0, 5, 5], "num_masks": "3"}, "num_masks"),
    "num_masks 3.0": ("/v1/segment", {"box": [0, 0, 5, 5], "num_masks": 3.0}, "num_masks"),
    "point strings": ("/v1/segment", {"points": [["10", "20"]], "labels": [1]}, "points"),
    "point true": ("/v1/segment", {"points": [[True, 20]], "labels": [1]}, "points"),
    "box strings": ("/v1/segment", {"box": ["0", "0", "5", "5"]}, "box"),
    "use_priors 'yes'": (
        "/v1/segment",
        {"box": [0, 0, 5, 5], "use_priors": "yes"},
        "use_priors",
    ),
    "use_priors 1": ("/v1/segment", {"box": [0, 0, 5, 5], "use_priors": 1}, "use_priors"),
    "points_per_side true": ("/v1/everything", {"points_per_side": True}, "points_per_side"),
    "points_per_side '8'": ("/v1/everything", {"points_per_side": "8"}, "points_per_side"),
    "points_per_side 8.0": ("/v1/everything", {"points_per_side": 8.0}, "points_per_side"),
    "pred_iou_thresh '0.5'": ("/v1/everything", {"pred_iou_thresh": "0.5"}, "pred_iou_thresh"),
}


@pytest.mark.parametrize("name", list(LAX_TYPES))
def test_request_types_are_strict(both: BothTransports, image_id: str, name: str) -> None:
    route, fields, field = LAX_TYPES[name]
    r = both.http.post(route, json={"image_id": image_id, **fields})
    http_error(r, 422, "invalid_request")
    assert r.json()["message"].startswith(field), r.json()


def test_ints_are_still_numbers_and_grpc_still_converts(
    both: BothTransports, image_id: str
) -> None:
    """Strict mode takes an int where a float is expected; and the gRPC conversions (repeated
    fields, optional scalars, enums) build the strict models as before."""
    body = {
        "image_id": image_id,
        "points": [[10, 20], [30.5, 7]],
        "labels": [1, 0],
        "box": [0, 0, 40, 30],
        "num_masks": 3,
        "use_priors": False,
        "output": ["rle", "png"],
    }
    r = both.http.post("/v1/segment", json=body)
    assert r.status_code == 200, r.text
    request = pb.SegmentRequest(
        image_id=image_id,
        points=_pts((10, 20), (30.5, 7)),
        labels=[1, 0],
        box=_box(0, 0, 40, 30),
        num_masks=3,
        use_priors=False,
        outputs=[pb.OUTPUT_FORMAT_RLE, pb.OUTPUT_FORMAT_PNG],
    )
    g = both.stub.Segment(request, timeout=30)
    assert [m.rle.counts for m in g.masks] == [m["rle"]["counts"] for m in r.json()["masks"]]
    params = {"points_per_side": 4, "points_per_batch": 8, "pred_iou_thresh": 0, "max_masks": 3}
    r = both.http.post("/v1/everything", json={"image_id": image_id, **params})
    assert r.status_code == 200, r.text
    g = both.stub.SegmentEverything(
        pb.EverythingRequest(image_id=image_id, **params, stability_score_offset=1), timeout=60
    )
    assert len(g.masks) == len(r.json()["masks"])


# -- prompt counts beyond the schema's old caps ------------------------------------------------


# name -> (HTTP body fields, gRPC SegmentRequest fields, words the message must hold): more
# prompts than the configured limits (8 points, 4 boxes here) are invalid_prompt whatever the
# count; beyond the schema's caps (4096 points or labels, 1024 boxes: the largest limits a
# server takes) they were invalid_request
TOO_MANY_PROMPTS: dict[str, tuple[dict, dict, str]] = {
    "4096 points": (
        {"points": [[1, 1]] * 4096, "labels": [1] * 4096},
        {"points": _pts(*[(1, 1)] * 4096), "labels": [1] * 4096},
        "4096 points; at most 8 are accepted",
    ),
    "4097 points": (
        {"points": [[1, 1]] * 4097, "labels": [1] * 4097},
        {"points": _pts(*[(1, 1)] * 4097), "labels": [1] * 4097},
        "4097 points; at most 4096 are accepted",
    ),
    "5000 labels for one point": (
        {"points": [[1, 1]], "labels": [1] * 5000},
        {"points": _pts((1, 1)), "labels": [1] * 5000},
        "5000 labels; at most 4096 are accepted",
    ),
    "1024 boxes": (
        {"boxes": [[0, 0, 5, 5]] * 1024},
        {"boxes": [_box(0, 0, 5, 5)] * 1024},
        "1024 boxes; at most 4 are accepted",
    ),
    "1025 boxes": (
        {"boxes": [[0, 0, 5, 5]] * 1025},
        {"boxes": [_box(0, 0, 5, 5)] * 1025},
        "1025 boxes; at most 1024 are accepted",
    ),
}


@pytest.mark.parametrize("name", list(TOO_MANY_PROMPTS))
def test_too_many_prompts_are_invalid_prompts_whatever_the_count(
    both: BothTransports, image_id: str, name: str
) -> None:
    body, fields, words = TOO_MANY_PROMPTS[name]
    r = both.http.post("/v1/segment", json={"image_id": image_id, **body})
    http_error(r, 422, "invalid_prompt")
    assert words in r.json()["message"], r.json()
    request = pb.SegmentRequest(image_id=image_id, **fields)
    grpc_error(lambda: both.stub.Segment(request, timeout=30), INVALID, "invalid_prompt")
    with pytest.raises(grpc.RpcError) as info:
        both.stub.Segment(request, timeout=30)
    assert words in info.value.details()


def test_enormous_prompt_lists_cost_little(both: BothTransports, image_id: str) -> None:
    """Bad items past the caps are refused from the list's length (not 300,000 validation
    errors), and the body limit (EDGESAM_MAX_JSON_BYTES, 1 MiB here; the same limit on the
    gRPC message) bounds what arrives at all."""
    hostile = {"image_id": image_id, "points": [[1, 1]], "labels": [2] * 300_000}
    r = both.http.post("/v1/segment", json=hostile)
    http_error(r, 422, "invalid_prompt")
    assert "300000 labels" in r.json()["message"]
    count = 200_000
    body = json.dumps({"image_id": image_id, "points": [[1, 1]] * count, "labels": [1] * count})
    assert len(body) > both.service.settings.max_json_bytes
    http_error(both.http.post("/v1/segment", content=body, headers=JSON), 413, "payload_too_large")
    request = pb.SegmentRequest(
        image_id=image_id, points=_pts(*[(1, 1)] * count), labels=[1] * count
    )
    grpc_error(
        lambda: both.stub.Segment(request, timeout=30),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "payload_too_large",
    )


# -- hex ids in either case --------------------------------------------------------------------


def test_upper_case_hex_ids_find_the_same_embedding(both: BothTransports) -> None:
    data = png_bytes(test_image(40, 50, seed=23))
    lower = both.http.post("/v1/embed", content=data, headers={"content-type": "image/png"}).json()[
        "image_id"
    ]
    assert lower == lower.lower()
    upper, mixed = lower.upper(), lower[:32].upper() + lower[32:]
    prompt = {"points": [[20, 20]], "labels": [1], "output": ["rle"]}
    want = both.http.post("/v1/segment", json={"image_id": lower, **prompt}).json()
    for given in (upper, mixed):
        r = both.http.post("/v1/segment", json={"image_id": given, **prompt})
        assert r.status_code == 200, r.text
        assert r.json()["image_id"] == lower
        assert r.json()["masks"] == want["masks"]
        g = both.stub.Segment(
            pb.SegmentRequest(image_id=given, points=_pts((20, 20)), labels=[1]), timeout=30
        )
        assert g.image_id == lower
        assert [m.rle.counts for m in g.masks] == [m["rle"]["counts"] for m in want["masks"]]
    # a refinement id in upper case finds its mask, over both transports
    refine = {
        "image_id": upper,
        "box": [0, 0, 30, 30],
        "mask_input_id": want["mask_input_id"].upper(),
    }
    assert both.http.post("/v1/segment", json=refine).status_code == 200
    both.stub.Segment(
        pb.SegmentRequest(
            image_id=upper, box=_box(0, 0, 30, 30), mask_input_id=want["mask_input_id"].upper()
        ),
        timeout=30,
    )
    r = both.http.post("/v1/everything", json={"image_id": upper, "points_per_side": 2})
    assert r.status_code == 200 and r.json()["image_id"] == lower, r.text
    # the interactive session and the embedding routes
    start = pb.InteractiveRequest(start=pb.SessionStart(image_id=upper))
    click = pb.InteractiveRequest(click=pb.Click(x=20, y=20, label=1))
    answers = list(both.stub.InteractiveSegment(iter([start, click]), timeout=30))
    assert answers[0].started.image_id == lower
    assert answers[1].WhichOneof("result") == "masks", answers[1]
    assert both.http.head(f"/v1/embeddings/{upper}").status_code == 200
    status = both.stub.HasEmbedding(pb.EmbeddingRef(image_id=mixed), timeout=5)
    assert (status.image_id, status.exists) == (lower, True)
    assert both.http.delete(f"/v1/embeddings/{upper}").status_code == 204
    assert both.http.head(f"/v1/embeddings/{lower}").status_code == 404
    assert both.stub.Embed(pb.EmbedRequest(image=data), timeout=30).cached is False
    assert both.stub.DeleteEmbedding(pb.EmbeddingRef(image_id=upper), timeout=5).image_id == lower
    assert both.stub.HasEmbedding(pb.EmbeddingRef(image_id=lower), timeout=5).exists is False
    http_error(both.http.delete(f"/v1/embeddings/{'G' * 64}"), 422, "invalid_request")


# -- oversized gRPC images ---------------------------------------------------------------------


def test_oversized_grpc_image_answers_payload_too_large(start_grpc_service) -> None:  # noqa: ANN001
    """Over the configured image limit (EDGESAM_MAX_BODY_BYTES) gRPC answers as HTTP does:
    RESOURCE_EXHAUSTED with edgesam-error-code payload_too_large, up to a bounded margin
    (grpc_server.receive_limit); beyond that margin gRPC itself refuses the message, with no
    code of ours."""
    from service.grpc_server import receive_limit

    limit = 200_000
    small = start_grpc_service(max_body_bytes=limit)
    over = b"\x89PNG\r\n\x1a\n" + b"\0" * limit  # one image's worth past the limit
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_error(
        small.http.post("/v1/embed", content=over, headers={"content-type": "image/png"}),
        413,
        "payload_too_large",
    )
    for image in (over, over + b"\0" * 300_000):  # beyond the old limit + 64 KiB envelope too
        grpc_error(
            lambda image=image: small.stub.Embed(
                pb.EmbedRequest(image=image, content_type="image/png"), timeout=30
            ),
            exhausted,
            "payload_too_large",
        )
    with pytest.raises(grpc.RpcError) as info:
        small.stub.Embed(pb.EmbedRequest(image=over), timeout=30)
    assert str(limit) in info.value.details()
    start = pb.InteractiveRequest(start=pb.SessionStart(image=over))
    grpc_error(
        lambda: list(small.stub.InteractiveSegment(iter([start]), timeout=30)),
        exhausted,
        "payload_too_large",
    )
    # at the limit: decoded (and refused as a truncated PNG, not as too large)
    grpc_error(
        lambda: small.stub.Embed(pb.EmbedRequest(image=over[:limit]), timeout=30),
        INVALID,
        "invalid_image",
    )
    # far past it: gRPC's own refusal, before any of our code runs
    far = b"\0" * (receive_limit(small.service.settings) + 1)
    with pytest.raises(grpc.RpcError) as info:
        small.stub.Embed(pb.EmbedRequest(image=far), timeout=30)
    assert info.value.code() == exhausted
    assert "edgesam-error-code" not in dict(info.value.trailing_metadata() or ())


def test_a_huge_content_type_still_gets_our_error_code(both: BothTransports) -> None:
    """The refusal quotes the content type: cut short, so the error itself stays small
    enough for gRPC's trailing metadata and for a client's log."""
    huge = "image/" + "x" * 100_000
    data = png_bytes(test_image(10, 10, seed=2))
    r = both.http.post("/v1/embed", content=data, headers={"content-type": huge})
    http_error(r, 415, "unsupported_media_type")
    assert len(r.json()["message"]) < 300
    grpc_error(
        lambda: both.stub.Embed(pb.EmbedRequest(image=data, content_type=huge), timeout=30),
        INVALID,
        "unsupported_media_type",
    )


def test_output_lists_are_bounded(both: BothTransports, image_id: str) -> None:
    fields = {"image_id": image_id, "box": [0, 0, 5, 5]}
    ok = both.http.post("/v1/segment", json={**fields, "output": ["rle", "png", "rle"]})
    assert ok.status_code == 200, ok.text
    r = both.http.post("/v1/segment", json={**fields, "output": ["rle"] * 100_000})
    http_error(r, 422, "invalid_request")
    assert r.json()["message"].startswith("output"), r.json()


# -- the published OpenAPI schema tells the truth ----------------------------------------------

SCHEMA_MODELS = {
    model.__name__: model
    for model in (EmbedResult, ErrorBody, EverythingResult, Readiness, SegmentResult)
}


def assert_documented(spec: dict, method: str, template: str, r: httpx.Response) -> None:
    """The answer's status is declared for the operation, its media type is the declared one
    (none where none is declared) and its body validates against the declared model."""
    responses = spec["paths"][template][method.lower()]["responses"]
    where = f"{method} {template} answered {r.status_code}"
    assert str(r.status_code) in responses, f"{where}; declared: {sorted(responses)}"
    content = responses[str(r.status_code)].get("content")
    media = r.headers.get("content-type", "").split(";")[0].strip()
    if not content:
        assert not media and not r.content, f"{where} with {media!r}; declared: no content"
        return
    assert media in content, f"{where} with {media!r}; declared: {sorted(content)}"
    if method == "HEAD":
        assert not r.content
        return
    ref = content[media]["schema"].get("$ref")
    if ref:
        SCHEMA_MODELS[ref.rsplit("/", 1)[1]].model_validate_json(r.content)


def test_every_answer_is_declared_in_the_openapi_schema(
    both: BothTransports, image_id: str
) -> None:
    """The answers a client meets, each checked against /openapi.json: schemathesis found
    /metrics answering text/plain where application/json was declared, HEAD answering a 404
    with no content type where an ErrorBody was declared, and 500/501 undeclared."""
    spec = both.http.get("/openapi.json").json()
    c = both.http
    unknown = "0" * 64
    png = {"content-type": "image/png"}
    doomed = c.post("/v1/embed", content=png_bytes(test_image(20, 30, seed=77)), headers=png)
    answers = {
        ("GET", "/healthz"): [c.get("/healthz")],
        ("GET", "/readyz"): [c.get("/readyz")],
        ("GET", "/metrics"): [c.get("/metrics")],
        ("HEAD", "/v1/embeddings/{image_id}"): [
            c.head(f"/v1/embeddings/{image_id}"),
            c.head(f"/v1/embeddings/{unknown}"),
            c.head(f"/v1/embeddings/{'g' * 64}"),
        ],
        ("DELETE", "/v1/embeddings/{image_id}"): [
            c.delete(f"/v1/embeddings/{doomed.json()['image_id']}"),
            c.delete(f"/v1/embeddings/{unknown}"),
            c.delete(f"/v1/embeddings/{'g' * 64}"),
        ],
        ("POST", "/v1/embed"): [
            c.post("/v1/embed", content=PNG_BYTES, headers=png),
            c.post("/v1/embed", content=PNG_BYTES[:100], headers=png),
            c.post("/v1/embed", content=b"text", headers=png),
            c.post("/v1/embed", content=BAD_IMAGES["above the pixel limit"][0](), headers=png),
        ],
        ("POST", "/v1/segment"): [
            c.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5]}),
            c.post("/v1/segment", json={"image_id": unknown, "box": [0, 0, 5, 5]}),
            c.post("/v1/segment", json={"image_id": image_id}),
        ],
        ("POST", "/v1/everything"): [
            c.post("/v1/everything", json={"image_id": image_id, "points_per_side": 2}),
            c.post("/v1/everything", json={"image_id": unknown}),
        ],
    }
    assert {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops} == set(answers)
    statuses = set()
    for (method, template), responses in answers.items():
        for r in responses:
            assert_documented(spec, method, template, r)
            statuses.add(r.status_code)
    assert statuses == {200, 204, 400, 404, 413, 415, 422}


class FailingDecoder(FakeBackend):
    """Decodes until `fail` is set, then fails as a broken runtime does."""

    fail = False

    def decode(self, *args: object, **kwargs: object) -> tuple:
        if self.fail:
            raise BackendError("the decoder is broken")
        return super().decode(*args, **kwargs)


def test_server_side_failures_are_declared_in_the_openapi_schema(
    start_service,  # noqa: ANN001
    redis_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """500 backend_error, 501 unavailable_feature, and /readyz's 503 (a Readiness body, not
    an ErrorBody) were answered but not declared."""
    backend = FailingDecoder()
    rs = start_service(backend=backend, redis_url=redis_url, redis_key_prefix=redis_prefix)
    c = rs.client
    spec = c.get("/openapi.json").json()
    image_id = c.post("/v1/embed", content=PNG_BYTES, headers={"content-type": "image/png"}).json()[
        "image_id"
    ]
    backend.fail = True
    r = c.post("/v1/everything", json={"image_id": image_id, "points_per_side": 2})
    http_error(r, 500, "backend_error")
    assert_documented(spec, "POST", "/v1/everything", r)
    r = c.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5]})
    http_error(r, 500, "backend_error")
    assert_documented(spec, "POST", "/v1/segment", r)
    from engine.amg import EdgeSamAutomaticMaskGenerator

    monkeypatch.delattr(EdgeSamAutomaticMaskGenerator, "generate_from_embedding")
    r = c.post("/v1/everything", json={"image_id": image_id})
    http_error(r, 501, "unavailable_feature")
    assert_documented(spec, "POST", "/v1/everything", r)
    rs.service.begin_drain()
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    assert_documented(spec, "GET", "/readyz", r)


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("GET", "/v1/embeddings/" + "a" * 64, "DELETE, HEAD"),
        ("PUT", "/v1/embeddings/" + "a" * 64, "DELETE, HEAD"),
        ("GET", "/v1/segment", "POST"),
        ("TRACE", "/v1/embed", "POST"),
        ("POST", "/readyz", "GET"),
        ("DELETE", "/static/app.js", "GET, HEAD"),
    ],
)
def test_method_not_allowed_names_the_allowed_methods(
    both: BothTransports, method: str, path: str, allow: str
) -> None:
    """RFC 9110: a 405 carries Allow. The error handler dropped Starlette's header, which
    named only the first route on the path (HEAD, not DELETE, on /v1/embeddings/{id})."""
    r = both.http.request(method, path)
    http_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow") == allow


def test_error_messages_stay_short_and_name_the_problem(
    both: BothTransports, image_id: str
) -> None:
    """A multipart refusal (422) no longer quotes Starlette's "400: ...", and an unknown
    field's name is cut short as a content type is (a 100 kB name was echoed whole)."""
    r = both.http.post("/v1/embed", content=b"xx", headers={"content-type": "multipart/form-data"})
    http_error(r, 422, "invalid_request")
    assert "400" not in r.json()["message"] and "boundary" in r.json()["message"]
    body = {"image_id": image_id, "box": [0, 0, 5, 5], "k" * 100_000: 1}
    r = both.http.post("/v1/segment", json=body)
    http_error(r, 422, "invalid_request")
    assert r.json()["message"].startswith("unknown field 'kkk")
    assert len(r.json()["message"]) < 300
    r = both.http.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5], "x": 1})
    assert r.json()["message"] == "unknown field 'x'"
