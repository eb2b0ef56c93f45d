"""The HTTP API over loopback against a real Redis, with the deterministic fake backend."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from engine.compat import zip_strict
from tests.fake_backend import FakeBackend
from tests.integration.conftest import RunningService, png_bytes, test_image

PNG = {"content-type": "image/png"}


@pytest.fixture
def svc(start_service, redis_url: str, redis_prefix: str) -> RunningService:
    return start_service(
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        max_body_bytes=200_000,
        max_json_bytes=8192,
        max_image_pixels=300 * 300,
        max_points=4,
        max_boxes=3,
    )


def _embed(svc: RunningService, image: np.ndarray | None = None) -> dict:
    r = svc.client.post(
        "/v1/embed", content=png_bytes(test_image() if image is None else image), headers=PNG
    )
    assert r.status_code == 200, r.text
    return r.json()


def _assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    assert body["message"] and "Traceback" not in body["message"]


def test_embed_raw_and_multipart_then_cached(svc: RunningService) -> None:
    data = png_bytes(test_image())
    first = svc.client.post("/v1/embed", content=data, headers=PNG).json()
    assert first["width"] == 128 and first["height"] == 96
    assert first["cached"] is False and first["expires_in"] > 0
    import hashlib

    assert first["image_id"] == hashlib.sha256(data).hexdigest()
    second = svc.client.post("/v1/embed", files={"file": ("x.png", data, "image/png")}).json()
    assert second["image_id"] == first["image_id"] and second["cached"] is True
    generic = svc.client.post(
        "/v1/embed", files={"file": ("x", data, "application/octet-stream")}
    ).json()
    assert generic["cached"] is True


def test_cache_hit_answers_without_decoding_the_image(svc: RunningService, monkeypatch) -> None:
    data = png_bytes(test_image(seed=5))
    svc.client.post("/v1/embed", content=data, headers=PNG)
    import service.codecs

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded on a cache hit")

    monkeypatch.setattr(service.codecs, "decode_image", boom)
    r = svc.client.post("/v1/embed", content=data, headers=PNG)
    assert r.status_code == 200 and r.json()["cached"] is True


def test_exif_orientation(svc: RunningService) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    Image.fromarray(test_image(40, 60)).save(buf, format="JPEG", exif=exif.tobytes())
    r = svc.client.post("/v1/embed", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert (r.json()["width"], r.json()["height"]) == (40, 60)


def test_segment_point_outputs(svc: RunningService) -> None:
    image_id = _embed(svc)["image_id"]
    r = svc.client.post(
        "/v1/segment",
        json={
            "image_id": image_id,
            "points": [[64, 48]],
            "labels": [1],
            "output": ["rle", "png", "polygons"],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["width"] == 128 and body["height"] == 96
    (item,) = body["masks"]
    mask = mask_utils.decode(
        {"size": item["rle"]["size"], "counts": item["rle"]["counts"].encode()}
    )
    assert mask.shape == (96, 128)
    assert mask[48, 64] == 1 and mask[0, 0] == 0  # the fake backend's disc is at the point
    assert item["area"] == int(mask.sum())
    x, y, w, h = item["bbox"]
    assert x <= 64 < x + w and y <= 48 < y + h
    png = cv2.imdecode(np.frombuffer(base64.b64decode(item["png"]), np.uint8), 0)
    np.testing.assert_array_equal(png > 0, mask.astype(bool))
    assert item["polygons"] and len(item["polygons"][0]) >= 6
    assert 0 <= item["score"] <= 1 and 0 <= item["stability_score"] <= 1
    assert body["mask_input_id"] == body["mask_input_ids"][0]
    # default output is rle only
    r = svc.client.post(
        "/v1/segment", json={"image_id": image_id, "points": [[64, 48]], "labels": [1]}
    )
    assert set(r.json()["masks"][0]) >= {"rle", "score"} and "png" not in r.json()["masks"][0]


def test_num_masks_boxes_and_refinement(svc: RunningService) -> None:
    image_id = _embed(svc)["image_id"]
    for n in (1, 3, 4):
        r = svc.client.post(
            "/v1/segment",
            json={"image_id": image_id, "points": [[10, 10]], "labels": [1], "num_masks": n},
        )
        assert [m["mask_index"] for m in r.json()["masks"]] == list(range(n))
    boxes = [[5, 5, 40, 40], [60, 30, 120, 90]]
    r = svc.client.post("/v1/segment", json={"image_id": image_id, "boxes": boxes})
    body = r.json()
    assert [m["prompt_index"] for m in body["masks"]] == [0, 1]
    assert len(body["mask_input_ids"]) == 2
    for item, (x0, y0, x1, y1) in zip_strict(body["masks"], boxes):
        bx, by, bw, bh = item["bbox"]
        assert x0 - 8 <= bx and bx + bw <= x1 + 8 and y0 - 8 <= by and by + bh <= y1 + 8
    # refinement changes the answer (the fake adds 0.5 * mask_input to the logits)
    base = svc.client.post(
        "/v1/segment", json={"image_id": image_id, "points": [[90, 60]], "labels": [1]}
    ).json()
    refined = svc.client.post(
        "/v1/segment",
        json={
            "image_id": image_id,
            "points": [[90, 60]],
            "labels": [1],
            "mask_input_id": body["mask_input_ids"][0],
        },
    ).json()
    assert refined["masks"][0]["rle"] != base["masks"][0]["rle"]
    r = svc.client.post(
        "/v1/segment",
        json={"image_id": image_id, "points": [[90, 60]], "labels": [1], "mask_input_id": "f" * 32},
    )
    _assert_error(r, 404, "mask_input_not_found")


def test_unknown_image_is_404_embedding_not_found(svc: RunningService) -> None:
    r = svc.client.post("/v1/segment", json={"image_id": "0" * 64, "box": [0, 0, 5, 5]})
    _assert_error(r, 404, "embedding_not_found")


def test_head_and_delete(svc: RunningService) -> None:
    image_id = _embed(svc)["image_id"]
    assert svc.client.head(f"/v1/embeddings/{image_id}").status_code == 200
    assert svc.client.delete(f"/v1/embeddings/{image_id}").status_code == 204
    assert svc.client.head(f"/v1/embeddings/{image_id}").status_code == 404
    _assert_error(svc.client.delete(f"/v1/embeddings/{image_id}"), 404, "embedding_not_found")
    r = svc.client.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5]})
    _assert_error(r, 404, "embedding_not_found")
    _assert_error(svc.client.delete("/v1/embeddings/nothex"), 422, "invalid_request")


def _bomb_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * ((width // 8 + 1) * min(height, 64)), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_bad_images(svc: RunningService) -> None:
    c = svc.client
    data = png_bytes(test_image())
    _assert_error(
        c.post("/v1/embed", content=b"x" * 250_000, headers=PNG), 413, "payload_too_large"
    )

    def chunks():
        for _ in range(30):
            yield b"\x00" * 10_000

    _assert_error(c.post("/v1/embed", content=chunks(), headers=PNG), 413, "payload_too_large")
    gif = io.BytesIO()
    Image.fromarray(test_image()).save(gif, format="GIF")
    _assert_error(
        c.post("/v1/embed", content=gif.getvalue(), headers={"content-type": "image/gif"}),
        415,
        "unsupported_media_type",
    )
    _assert_error(
        c.post("/v1/embed", content=gif.getvalue(), headers=PNG), 415, "unsupported_media_type"
    )
    _assert_error(
        c.post("/v1/embed", files={"file": ("g.gif", gif.getvalue(), "image/gif")}),
        415,
        "unsupported_media_type",
    )
    _assert_error(
        c.post("/v1/embed", content=data[: len(data) // 2], headers=PNG), 400, "invalid_image"
    )
    _assert_error(c.post("/v1/embed", content=b"", headers=PNG), 400, "invalid_image")
    _assert_error(
        c.post("/v1/embed", content=png_bytes(np.zeros((310, 310, 3), np.uint8)), headers=PNG),
        413,
        "image_too_large",
    )
    _assert_error(
        c.post("/v1/embed", content=_bomb_png(50_000, 50_000), headers=PNG), 413, "image_too_large"
    )
    text_only = (
        b'--b0undary\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b"--b0undary--\r\n"
    )
    multipart = {"content-type": "multipart/form-data; boundary=b0undary"}
    _assert_error(c.post("/v1/embed", content=text_only, headers=multipart), 422, "invalid_request")
    _assert_error(
        c.post("/v1/embed", content=b"--b0undary\r\ngarbage", headers=multipart),
        422,
        "invalid_request",
    )


def test_bad_prompts(svc: RunningService) -> None:
    image_id = _embed(svc)["image_id"]
    c = svc.client

    def seg(**kw: object) -> httpx.Response:
        return c.post("/v1/segment", json={"image_id": image_id, **kw})

    _assert_error(seg(points=[[500, 10]], labels=[1]), 422, "invalid_prompt")
    _assert_error(seg(points=[[-0.5, 10]], labels=[1]), 422, "invalid_prompt")
    _assert_error(seg(box=[50, 50, 10, 10]), 422, "invalid_prompt")
    _assert_error(seg(points=[[1, 1]] * 5, labels=[1] * 5), 422, "invalid_prompt")
    _assert_error(seg(boxes=[[1, 1, 5, 5]] * 4), 422, "invalid_prompt")
    _assert_error(seg(points=[[1, 1]], labels=[1, 1]), 422, "invalid_prompt")
    _assert_error(seg(), 422, "invalid_prompt")
    nan = '{"image_id": "' + image_id + '", "points": [[NaN, 1]], "labels": [1]}'
    _assert_error(
        c.post("/v1/segment", content=nan, headers={"content-type": "application/json"}),
        422,
        "invalid_prompt",
    )
    r = seg(points=[[1, 1]], labels=[1], colour="red")
    _assert_error(r, 422, "invalid_request")
    assert "colour" in r.json()["message"]
    _assert_error(seg(points=[[1, 1]], labels=[2]), 422, "invalid_request")
    _assert_error(seg(points=[[1, 1, 1]], labels=[1]), 422, "invalid_request")
    _assert_error(seg(points=[[1, 1]], labels=[1], num_masks=2), 422, "invalid_request")
    _assert_error(seg(points=[[1, 1]], labels=[1], output=["jpeg"]), 422, "invalid_request")
    _assert_error(
        c.post("/v1/segment", content="{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    _assert_error(
        c.post("/v1/segment", json={"image_id": "short", "box": [0, 0, 1, 1]}),
        422,
        "invalid_request",
    )
    big = {"image_id": image_id, "points": [[1, 1]] * 2000, "labels": [1] * 2000}
    _assert_error(c.post("/v1/segment", json=big), 413, "payload_too_large")
    _assert_error(c.get("/v1/segment"), 405, "method_not_allowed")
    _assert_error(c.get("/nowhere"), 404, "not_found")


def test_everything_validates_parameters(svc: RunningService) -> None:
    image_id = _embed(svc)["image_id"]
    r = svc.client.post("/v1/everything", json={"image_id": image_id, "points_per_side": 0})
    _assert_error(r, 422, "invalid_request")
    r = svc.client.post("/v1/everything", json={"image_id": image_id, "pred_iou_thresh": 1.5})
    _assert_error(r, 422, "invalid_request")
    r = svc.client.post("/v1/everything", json={"image_id": "1" * 64})
    _assert_error(r, 404, "embedding_not_found")
    r = svc.client.post(
        "/v1/everything",
        json={
            "image_id": image_id,
            "points_per_side": 4,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["masks"] and "rle" in r.json()["masks"][0]


def test_health_ready_metrics(svc: RunningService) -> None:
    c = svc.client
    assert c.get("/healthz").json() == {"status": "alive"}
    ready = c.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] and body["status"] == "ok" and body["cache"]["status"] == "ok"
    assert body["backend"]["name"] == "fake" and body["random_weights"] is False
    assert "x-edgesam-random-weights" not in ready.headers
    image_id = _embed(svc)["image_id"]
    c.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 50, 50]})
    c.post("/v1/segment", json={"image_id": "2" * 64, "box": [0, 0, 50, 50]})
    text = c.get("/metrics").text
    assert (
        'edgesam_request_duration_seconds_bucket{le="0.1",method="POST",route="/v1/segment",status="200"}'
        in text
    )
    assert 'route="/v1/segment",status="404"' in text
    assert "edgesam_encoder_batch_size_count" in text
    assert 'edgesam_cache_hits_total{kind="embedding",layer="lru"}' in text
    assert 'edgesam_cache_misses_total{kind="embedding"}' in text
    assert "edgesam_cache_errors_total" in text
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/segment", "/v1/everything", "/v1/embeddings/{image_id}"} <= set(
        spec["paths"]
    )


def test_overload_is_503_with_retry_after(start_service, redis_url: str, redis_prefix: str) -> None:
    rs = start_service(
        backend=FakeBackend(encode_delay_s=0.5),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        encode_max_queue=1,
        encode_workers=1,
    )
    images = [png_bytes(test_image(seed=s)) for s in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda d: httpx.post(f"{rs.url}/v1/embed", content=d, headers=PNG, timeout=30),
                images,
            )
        )
    statuses = sorted(r.status_code for r in answers)
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["code"] == "overloaded"


def test_api_keys(start_service) -> None:
    rs = start_service(api_keys="first-key-123,second-key-456")
    c = rs.client
    _assert_error(c.post("/v1/segment", json={}), 401, "unauthenticated")
    _assert_error(
        c.get("/metrics", headers={"authorization": "Bearer wrong-key-000"}), 401, "unauthenticated"
    )
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    # The web page loads without a key (it asks for one and sends it on API calls).
    assert c.get("/").status_code == 200
    _assert_error(c.get("/v1/embeddings/abc"), 401, "unauthenticated")
    assert c.get("/metrics", headers={"authorization": "Bearer second-key-456"}).status_code == 200
    r = c.post(
        "/v1/embed", content=png_bytes(test_image()), headers={**PNG, "x-api-key": "first-key-123"}
    )
    assert r.status_code == 200
    # the published schema asks for the key where the middleware does, and only there
    schema = c.get("/openapi.json", headers={"x-api-key": "first-key-123"}).json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerKey"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"ApiKeyHeader": []}, {"BearerKey": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/v1/segment"]["post"]  # the global one applies
    open_schema = start_service().client.get("/openapi.json").json()
    assert "security" not in open_schema and "securitySchemes" not in open_schema["components"]


def test_random_weights_header_on_every_answer(start_service) -> None:
    rs = start_service()
    rs.service.random_weights = True  # as when started without a checkpoint
    for r in (
        rs.client.get("/healthz"),
        rs.client.get("/nowhere"),
        rs.client.post("/v1/segment", json={}),
    ):
        assert r.headers.get("x-edgesam-random-weights") == "true"
    assert rs.client.get("/readyz").json()["random_weights"] is True


def test_not_ready_until_started_and_no_stack_traces(start_service, monkeypatch) -> None:
    class Broken(FakeBackend):
        def decode(self, *a, **k):  # type: ignore[no-untyped-def]
            raise KeyError("internal secret detail")

    rs = start_service(backend=Broken(), wait_ready=False)
    from tests.conftest import wait_until

    assert wait_until(lambda: rs.service.state != "loading")
    # warm-up failed: readiness says so, requests get 503 not_ready
    r = rs.client.get("/readyz")
    assert r.status_code == 503 and r.json()["model"]["status"] == "down"
    _assert_error(
        rs.client.post("/v1/segment", json={"image_id": "0" * 64, "box": [0, 0, 1, 1]}),
        503,
        "not_ready",
    )


def test_internal_errors_hide_details(start_service, monkeypatch) -> None:
    rs = start_service()
    image_id = json.loads(
        rs.client.post("/v1/embed", content=png_bytes(test_image()), headers=PNG).text
    )["image_id"]

    def broken(*a, **k):  # type: ignore[no-untyped-def]
        raise KeyError("internal secret detail")

    monkeypatch.setattr(rs.service.backend, "decode", broken)
    r = rs.client.post("/v1/segment", json={"image_id": image_id, "box": [0, 0, 5, 5]})
    _assert_error(r, 500, "internal_error")
    assert "secret" not in r.text
