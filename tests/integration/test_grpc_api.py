"""The gRPC API over a real loopback channel and a real Redis, beside HTTP in the same
process, with the deterministic fake backend: parity with HTTP, errors, limits, auth,
health, reflection, deadlines and the interactive session."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from engine.compat import zip_strict
from service.fake_backend import FakeBackend
from tests.conftest import wait_until
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image
from tests.integration.grpc_util import BothTransports
from tests.integration.test_http_api import _bomb_png

start_grpc_service = grpc_util.start_grpc_service  # the fixture

PNG = {"content-type": "image/png"}
LIMITS = {
    "max_body_bytes": 200_000,
    "max_json_bytes": 8192,
    "max_image_pixels": 300 * 300,
    "max_points": 4,
    "max_boxes": 3,
}


@pytest.fixture
def both(start_grpc_service, redis_url: str, redis_prefix: str) -> BothTransports:
    return start_grpc_service(
        redis_url=redis_url, redis_key_prefix=redis_prefix, cache_dtype="float32", **LIMITS
    )


def trailer(exc: grpc.RpcError, key: str = "edgesam-error-code") -> str | None:
    return dict(exc.trailing_metadata() or ()).get(key)


def expect_error(call, status: grpc.StatusCode, code: str | None) -> grpc.RpcError:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        call()
    exc = info.value
    assert exc.code() == status, (exc.code(), exc.details())
    if code is not None:
        assert trailer(exc) == code, exc.details()
    assert exc.details() and "Traceback" not in exc.details()
    return exc


def embed(both: BothTransports, image: np.ndarray | None = None) -> pb.EmbedResponse:
    data = png_bytes(test_image() if image is None else image)
    return both.stub.Embed(pb.EmbedRequest(image=data, content_type="image/png"), timeout=30)


def http_segment(both: BothTransports, **body: object) -> dict:
    r = both.http.post("/v1/segment", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_embed_and_segment_match_http(both: BothTransports) -> None:
    data = png_bytes(test_image())
    first = both.stub.Embed(pb.EmbedRequest(image=data), timeout=30)
    assert (first.width, first.height, first.cached) == (128, 96, False)
    assert first.expires_in > 0 and first.model_fingerprint == both.service.backend.fingerprint
    r = both.http.post("/v1/embed", content=data, headers=PNG).json()
    assert r["image_id"] == first.image_id and r["cached"] is True
    request = pb.SegmentRequest(
        image_id=first.image_id,
        points=[pb.Point(x=64, y=48), pb.Point(x=20, y=20)],
        labels=[1, 0],
        box=pb.Box(x0=30, y0=20, x1=100, y1=80),
        num_masks=3,
        outputs=[pb.OUTPUT_FORMAT_RLE, pb.OUTPUT_FORMAT_PNG, pb.OUTPUT_FORMAT_POLYGONS],
    )
    answer = both.stub.Segment(request, timeout=30)
    body = http_segment(
        both,
        image_id=first.image_id,
        points=[[64, 48], [20, 20]],
        labels=[1, 0],
        box=[30, 20, 100, 80],
        num_masks=3,
        output=["rle", "png", "polygons"],
    )
    assert (answer.width, answer.height) == (128, 96)
    assert len(answer.masks) == len(body["masks"]) == 3
    for got, want in zip_strict(answer.masks, body["masks"]):
        assert (got.prompt_index, got.mask_index) == (want["prompt_index"], want["mask_index"])
        assert got.rle.counts == want["rle"]["counts"] and list(got.rle.size) == [96, 128]
        assert got.png == base64.b64decode(want["png"])
        assert [list(p.xy) for p in got.polygons] == want["polygons"]
        assert got.score == pytest.approx(want["score"])
        assert got.stability_score == pytest.approx(want["stability_score"])
        assert [got.bbox.x, got.bbox.y, got.bbox.width, got.bbox.height] == want["bbox"]
        assert got.area == want["area"] > 0
    assert len(answer.mask_input_id) == 32 and list(answer.mask_input_ids) == [answer.mask_input_id]
    # the refinement id works on either transport
    refined = both.stub.Segment(
        pb.SegmentRequest(
            image_id=first.image_id,
            points=[pb.Point(x=64, y=48)],
            labels=[1],
            mask_input_id=answer.mask_input_id,
        ),
        timeout=30,
    )
    body = http_segment(
        both,
        image_id=first.image_id,
        points=[[64, 48]],
        labels=[1],
        mask_input_id=answer.mask_input_id,
    )
    assert refined.masks[0].rle.counts == body["masks"][0]["rle"]["counts"]
    # several boxes: one answer each, default output RLE only
    boxes = both.stub.Segment(
        pb.SegmentRequest(
            image_id=first.image_id,
            boxes=[pb.Box(x0=5, y0=5, x1=40, y1=40), pb.Box(x0=60, y0=30, x1=120, y1=90)],
        ),
        timeout=30,
    )
    assert [m.prompt_index for m in boxes.masks] == [0, 1] and len(boxes.mask_input_ids) == 2
    assert boxes.masks[0].HasField("rle") and not boxes.masks[0].png


def test_everything_and_embedding_management(both: BothTransports) -> None:
    image_id = embed(both).image_id
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    answer = both.stub.SegmentEverything(
        pb.EverythingRequest(image_id=image_id, **params), timeout=60
    )
    r = both.http.post("/v1/everything", json={"image_id": image_id, **params})
    assert r.status_code == 200, r.text
    want = r.json()["masks"]
    assert len(answer.masks) == len(want) > 0
    assert [m.rle.counts for m in answer.masks] == [m["rle"]["counts"] for m in want]
    assert [(m.point.x, m.point.y) for m in answer.masks] == [tuple(m["point"]) for m in want]

    ref = pb.EmbeddingRef(image_id=image_id)
    assert both.stub.HasEmbedding(ref, timeout=5).exists is True
    assert both.stub.DeleteEmbedding(ref, timeout=5).exists is True
    assert both.stub.HasEmbedding(ref, timeout=5).exists is False
    expect_error(
        lambda: both.stub.DeleteEmbedding(ref, timeout=5),
        grpc.StatusCode.NOT_FOUND,
        "embedding_not_found",
    )
    expect_error(
        lambda: both.stub.Segment(pb.SegmentRequest(image_id=image_id, box=pb.Box(x1=5, y1=5))),
        grpc.StatusCode.NOT_FOUND,
        "embedding_not_found",
    )
    expect_error(
        lambda: both.stub.HasEmbedding(pb.EmbeddingRef(image_id="nothex"), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_request",
    )
    assert both.http.head(f"/v1/embeddings/{image_id}").status_code == 404


def test_bad_images_give_the_http_codes(both: BothTransports) -> None:
    def embed_bytes(data: bytes, content_type: str = "image/png"):  # noqa: ANN202
        return lambda: both.stub.Embed(
            pb.EmbedRequest(image=data, content_type=content_type), timeout=30
        )

    data = png_bytes(test_image())
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    # over the image limit: RESOURCE_EXHAUSTED with our code, as HTTP's 413
    too_big = grpc.StatusCode.RESOURCE_EXHAUSTED
    expect_error(embed_bytes(b"x" * 300_000), too_big, "payload_too_large")
    # far over it (past grpc_server.receive_limit): gRPC's own refusal, before our code runs
    exc = expect_error(embed_bytes(b"x" * 1_500_000), too_big, None)
    assert trailer(exc) is None
    import io

    from PIL import Image

    gif = io.BytesIO()
    Image.fromarray(test_image()).save(gif, format="GIF")
    expect_error(embed_bytes(gif.getvalue(), "image/gif"), invalid, "unsupported_media_type")
    expect_error(embed_bytes(gif.getvalue()), invalid, "unsupported_media_type")
    expect_error(embed_bytes(data[: len(data) // 2]), invalid, "invalid_image")
    expect_error(embed_bytes(b""), invalid, "invalid_image")
    big = png_bytes(np.zeros((310, 310, 3), np.uint8))
    expect_error(embed_bytes(big), invalid, "image_too_large")
    expect_error(embed_bytes(_bomb_png(50_000, 50_000)), invalid, "image_too_large")
    # and HTTP agrees on the codes
    r = both.http.post("/v1/embed", content=data[: len(data) // 2], headers=PNG)
    assert r.json()["code"] == "invalid_image"


def test_bad_prompts_give_the_http_codes(both: BothTransports) -> None:
    image_id = embed(both).image_id
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    def seg(**kw: object):  # noqa: ANN202
        return lambda: both.stub.Segment(pb.SegmentRequest(image_id=image_id, **kw), timeout=10)

    def pts(*xy: tuple[float, float]) -> list[pb.Point]:
        return [pb.Point(x=x, y=y) for x, y in xy]

    cases = [
        (seg(points=pts((500, 10)), labels=[1]), "invalid_prompt"),
        (seg(points=pts((-0.5, 10)), labels=[1]), "invalid_prompt"),
        (seg(box=pb.Box(x0=50, y0=50, x1=10, y1=10)), "invalid_prompt"),
        (seg(points=pts(*[(1, 1)] * 5), labels=[1] * 5), "invalid_prompt"),
        (seg(boxes=[pb.Box(x0=1, y0=1, x1=5, y1=5)] * 4), "invalid_prompt"),
        (seg(points=pts((1, 1)), labels=[1, 1]), "invalid_prompt"),
        (seg(), "invalid_prompt"),
        (seg(points=pts((float("nan"), 1)), labels=[1]), "invalid_prompt"),
        (seg(box=pb.Box(x1=5, y1=5), boxes=[pb.Box(x1=5, y1=5)]), "invalid_prompt"),
        (seg(points=pts((1, 1)), labels=[2]), "invalid_request"),
        (seg(points=pts((1, 1)), labels=[1], num_masks=2), "invalid_request"),
        (seg(points=pts((1, 1)), labels=[1], num_masks=0), "invalid_request"),
        (seg(points=pts((1, 1)), labels=[1], outputs=[7]), "invalid_request"),
        (seg(points=pts((1, 1)), labels=[1], outputs=[0]), "invalid_request"),
        (seg(points=pts((1, 1)), labels=[1], mask_input_id="nothex"), "invalid_request"),
    ]
    for call, code in cases:
        expect_error(call, invalid, code)
    expect_error(
        lambda: both.stub.Segment(pb.SegmentRequest(image_id="short", box=pb.Box(x1=1, y1=1))),
        invalid,
        "invalid_request",
    )
    expect_error(
        seg(points=pts((1, 1)), labels=[1], mask_input_id="f" * 32),
        grpc.StatusCode.NOT_FOUND,
        "mask_input_not_found",
    )
    # above the JSON limit: 413 over HTTP, RESOURCE_EXHAUSTED here
    expect_error(
        seg(points=pts(*[(1, 1)] * 2000), labels=[1] * 2000),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "payload_too_large",
    )
    # everything parameters
    for kw in ({"points_per_side": 0}, {"pred_iou_thresh": 1.5}):
        expect_error(
            lambda kw=kw: both.stub.SegmentEverything(
                pb.EverythingRequest(image_id=image_id, **kw), timeout=10
            ),
            invalid,
            "invalid_request",
        )
    expect_error(
        lambda: both.stub.SegmentEverything(pb.EverythingRequest(image_id="1" * 64), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "embedding_not_found",
    )
    # a method that does not exist
    missing = both.channel.unary_unary("/edgesam.v1.Segmentation/Nowhere")
    expect_error(lambda: missing(b"", timeout=5), grpc.StatusCode.UNIMPLEMENTED, None)


def test_internal_errors_are_hidden(both: BothTransports, monkeypatch) -> None:  # noqa: ANN001
    image_id = embed(both).image_id

    def broken(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyError("internal secret detail")

    monkeypatch.setattr(both.service.backend, "decode", broken)
    exc = expect_error(
        lambda: both.stub.Segment(pb.SegmentRequest(image_id=image_id, box=pb.Box(x1=5, y1=5))),
        grpc.StatusCode.INTERNAL,
        "internal_error",
    )
    assert "secret" not in exc.details()
    text = both.http.get("/metrics").text
    assert 'route="/edgesam.v1.Segmentation/Segment",status="INTERNAL"' in text
    assert 'method="GRPC",route="/edgesam.v1.Segmentation/Embed",status="OK"' in text


def test_interactive_session(both: BothTransports) -> None:
    """Several clicks and a box on one stream: each answer equals the unary segment of the
    prompts so far refined by the previous answer's logits."""
    data = png_bytes(test_image())
    actions = [
        pb.InteractiveRequest(click=pb.Click(x=64, y=48, label=1)),
        pb.InteractiveRequest(click=pb.Click(x=80, y=50, label=1)),
        pb.InteractiveRequest(click=pb.Click(x=900, y=50, label=1)),  # refused in-band
        pb.InteractiveRequest(click=pb.Click(x=70, y=60, label=0)),
        pb.InteractiveRequest(box=pb.Box(x0=40, y0=20, x1=110, y1=90)),
        pb.InteractiveRequest(undo=pb.Undo()),
        pb.InteractiveRequest(reset=pb.Reset()),
        pb.InteractiveRequest(click=pb.Click(x=10, y=10, label=1)),
    ]
    start = pb.SessionStart(image=data, content_type="image/png", num_masks=1)
    requests = [pb.InteractiveRequest(start=start), *actions]
    answers = list(both.stub.InteractiveSegment(iter(requests), timeout=60))
    assert [a.seq for a in answers] == list(range(len(requests)))
    started = answers[0].started
    assert (started.width, started.height, started.cached) == (128, 96, False)
    image_id = started.image_id

    # the same sequence through unary Segment, chaining mask_input_id
    points: list[list[float]] = []
    labels: list[int] = []
    expected = []
    previous = None
    for pts, lbls in (([[64, 48]], [1]), ([[64, 48], [80, 50]], [1, 1])):
        body = {"image_id": image_id, "points": pts, "labels": lbls}
        if previous:
            body["mask_input_id"] = previous
        result = http_segment(both, **body)
        expected.append(result["masks"][0]["rle"]["counts"])
        previous = result["mask_input_id"]
    points, labels = [[64, 48], [80, 50], [70, 60]], [1, 1, 0]
    third = http_segment(
        both, image_id=image_id, points=points, labels=labels, mask_input_id=previous
    )
    boxed = http_segment(
        both,
        image_id=image_id,
        points=points,
        labels=labels,
        box=[40, 20, 110, 90],
        mask_input_id=third["mask_input_id"],
    )
    fresh = http_segment(both, image_id=image_id, points=[[10, 10]], labels=[1])

    def rle(i: int) -> str:
        assert answers[i].WhichOneof("result") == "masks", answers[i]
        return answers[i].masks.masks[0].rle.counts

    assert rle(1) == expected[0] and rle(2) == expected[1]
    assert rle(1) != rle(2)
    assert answers[3].error.code == "invalid_prompt" and "outside" in answers[3].error.message
    assert answers[3].num_points == 2  # the refused click changed nothing
    assert rle(4) == third["masks"][0]["rle"]["counts"] and answers[4].num_points == 3
    assert rle(5) == boxed["masks"][0]["rle"]["counts"] and answers[5].has_box
    assert rle(6) == rle(4) and not answers[6].has_box  # undo: the previous answer again
    assert len(answers[7].masks.masks) == 0 and answers[7].num_points == 0
    assert rle(8) == fresh["masks"][0]["rle"]["counts"]
    assert answers[1].masks.mask_input_id == ""  # nothing stored in the cache per click


def test_session_start_errors(both: BothTransports) -> None:
    def run(*requests: pb.InteractiveRequest) -> list[pb.InteractiveResponse]:
        return list(both.stub.InteractiveSegment(iter(requests), timeout=30))

    click = pb.InteractiveRequest(click=pb.Click(x=1, y=1, label=1))
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    expect_error(lambda: run(click), invalid, "invalid_request")
    expect_error(lambda: run(), invalid, "invalid_request")
    unknown = pb.InteractiveRequest(start=pb.SessionStart(image_id="a" * 64))
    expect_error(lambda: run(unknown, click), grpc.StatusCode.NOT_FOUND, "embedding_not_found")
    bad = pb.InteractiveRequest(start=pb.SessionStart(image=b"not an image"))
    expect_error(lambda: run(bad), invalid, "unsupported_media_type")
    image_id = embed(both).image_id
    opts = pb.InteractiveRequest(start=pb.SessionStart(image_id=image_id, num_masks=2))
    expect_error(lambda: run(opts), invalid, "invalid_request")
    ok = pb.InteractiveRequest(start=pb.SessionStart(image_id=image_id, num_masks=3))
    answers = run(ok, click, ok)
    assert answers[0].started.cached and len(answers[1].masks.masks) == 3
    assert answers[2].error.code == "invalid_request"


def test_api_keys_from_metadata(start_grpc_service) -> None:  # noqa: ANN001
    both = start_grpc_service(api_keys="first-key-123,second-key-456")
    data = png_bytes(test_image())
    request = pb.EmbedRequest(image=data)
    expect_error(
        lambda: both.stub.Embed(request, timeout=10),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )
    expect_error(
        lambda: both.stub.Embed(request, timeout=10, metadata=[("authorization", "Bearer nope")]),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )
    expect_error(
        lambda: list(
            both.stub.InteractiveSegment(
                iter([pb.InteractiveRequest(start=pb.SessionStart(image=data))]), timeout=10
            )
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )
    assert both.health() == health_pb2.HealthCheckResponse.SERVING  # health stays open
    ok = both.stub.Embed(request, timeout=10, metadata=[("authorization", "Bearer second-key-456")])
    assert len(ok.image_id) == 64
    ok = both.stub.Embed(request, timeout=10, metadata=[("x-api-key", "first-key-123")])
    assert ok.cached


def test_reflection_lists_the_service(both: BothTransports) -> None:
    db = ProtoReflectionDescriptorDatabase(both.channel)
    services = set(db.get_services())
    assert {"edgesam.v1.Segmentation", "grpc.health.v1.Health"} <= services
    proto = db.FindFileContainingSymbol("edgesam.v1.Segmentation")
    assert proto.name == "edgesam/v1/segmentation.proto" and proto.package == "edgesam.v1"
    methods = {m.name for m in proto.service[0].method}
    assert {"Embed", "Segment", "SegmentEverything", "InteractiveSegment"} <= methods


class SlowStart(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def warmup(self, encoder: bool = True) -> None:
        self.release.wait(30)
        super().warmup(encoder)


def test_health_follows_loading_and_draining(start_grpc_service) -> None:  # noqa: ANN001
    backend = SlowStart()
    both = start_grpc_service(backend=backend, wait_ready=False)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    serving = health_pb2.HealthCheckResponse.SERVING
    assert both.health() == not_serving
    assert both.health("edgesam.v1.Segmentation") == not_serving
    exc = expect_error(
        lambda: both.stub.Embed(pb.EmbedRequest(image=png_bytes(test_image())), timeout=5),
        grpc.StatusCode.UNAVAILABLE,
        "not_ready",
    )
    assert trailer(exc, "retry-after") == "2"
    backend.release.set()
    assert wait_until(lambda: both.health() == serving, 30)
    assert both.health("edgesam.v1.Segmentation") == serving
    both.service.begin_drain()  # what SIGTERM does first
    assert wait_until(lambda: both.health() == not_serving, 5)
    assert both.http.get("/readyz").status_code == 503


def test_deadline_is_honoured(start_grpc_service, redis_url: str, redis_prefix: str) -> None:  # noqa: ANN001
    both = start_grpc_service(
        backend=FakeBackend(encode_delay_s=1.5), redis_url=redis_url, redis_key_prefix=redis_prefix
    )
    begin = time.monotonic()
    expect_error(
        lambda: both.stub.Embed(pb.EmbedRequest(image=png_bytes(test_image(seed=3))), timeout=0.3),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        None,
    )
    assert time.monotonic() - begin < 1.2
    # the server gave up on the call too (its handler was cancelled at the deadline)
    assert wait_until(
        lambda: (
            'route="/edgesam.v1.Segmentation/Embed",status="CANCELLED"'
            in both.http.get("/metrics").text
        ),
        5,
    )


def test_overload_is_unavailable_with_retry_after(  # noqa: ANN001
    start_grpc_service, redis_url: str, redis_prefix: str
) -> None:
    both = start_grpc_service(
        backend=FakeBackend(encode_delay_s=0.5),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        encode_max_queue=1,
        encode_workers=1,
    )
    images = [png_bytes(test_image(seed=s)) for s in range(6)]

    def call(data: bytes) -> object:
        try:
            return both.stub.Embed(pb.EmbedRequest(image=data), timeout=30)
        except grpc.RpcError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, images))
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert refused and len(refused) < len(answers)
    assert refused[0].code() == grpc.StatusCode.UNAVAILABLE
    assert trailer(refused[0]) == "overloaded"
    assert trailer(refused[0], "retry-after") == "1"
