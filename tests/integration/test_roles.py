"""EDGESAM_ROLE end to end: one encoder process and two decoder processes on loopback sharing
one Redis. Embeds sent to any decoder (HTTP or gRPC) are encoded by the encoder; every
decoder answers segments for any image; errors and an absent encoder come back as codes."""

import re
import time

import grpc
import httpx
import pytest

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from service.core import SegmentationService
from service.fake_backend import FakeBackend
from service.http_app import create_app
from service.roles import apply_role
from tests.conftest import serve_app, wait_until
from tests.integration import process_util
from tests.integration.conftest import make_settings, png_bytes, test_image
from tests.integration.process_util import ServiceProcess

service_processes = process_util.service_processes  # the fixture
PNG = {"content-type": "image/png"}


def metric(proc: ServiceProcess, name: str, labels: str = "") -> float:
    """The value of one sample on /metrics (0 when absent)."""
    text = httpx.get(f"{proc.url}/metrics", timeout=5).text
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def embeds_served(proc: ServiceProcess) -> float:
    return metric(
        proc,
        "edgesam_request_duration_seconds_count",
        'method="GRPC",route="/edgesam.v1.Segmentation/Embed",status="OK"',
    )


def encoded(proc: ServiceProcess) -> float:
    return metric(proc, "edgesam_encoder_batch_size_sum")


@pytest.fixture
def cluster(service_processes, redis_url: str, redis_prefix: str):  # noqa: ANN001, ANN201
    shared = {"EDGESAM_REDIS_URL": redis_url, "EDGESAM_REDIS_KEY_PREFIX": redis_prefix}
    encoder = service_processes(EDGESAM_ROLE="encoder", **shared)
    target = f"dns:///127.0.0.1:{encoder.grpc_port}"
    encoder.env["EDGESAM_ENCODER_GRPC_TARGET_SELF"] = target
    decoders = [
        service_processes(EDGESAM_ROLE="decoder", EDGESAM_ENCODER_GRPC_TARGET=target, **shared)
        for _ in range(2)
    ]
    for proc in (encoder, *decoders):
        proc.wait_serving()
    return encoder, decoders


def test_embeds_go_to_the_encoder_and_any_decoder_segments(cluster) -> None:  # noqa: ANN001
    encoder, (dec_a, dec_b) = cluster
    images = [png_bytes(test_image(seed=s)) for s in range(3)]
    # image 0 through decoder A over HTTP, image 1 through decoder B over gRPC
    r = httpx.post(f"{dec_a.url}/v1/embed", content=images[0], headers=PNG, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["cached"] is False and r.json()["width"] == 128
    ids = [r.json()["image_id"]]
    with grpc.insecure_channel(dec_b.target) as channel:
        answer = pb_grpc.SegmentationStub(channel).Embed(
            pb.EmbedRequest(image=images[1]), timeout=30
        )
    assert answer.cached is False
    ids.append(answer.image_id)
    # image 2 straight to the encoder
    ids.append(
        httpx.post(f"{encoder.url}/v1/embed", content=images[2], headers=PNG).json()["image_id"]
    )

    assert embeds_served(encoder) == 2  # the two decoders' forwards
    assert encoded(encoder) == 3
    assert encoded(dec_a) == encoded(dec_b) == 0  # decoders never encode

    # every decoder (and the encoder, which also serves segments) answers for every image
    answers: dict[str, set[str]] = {image_id: set() for image_id in ids}
    for proc in (dec_a, dec_b, encoder):
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.SegmentationStub(channel)
            for image_id in ids:
                body = {"image_id": image_id, "points": [[60, 40]], "labels": [1]}
                r = httpx.post(f"{proc.url}/v1/segment", json=body, timeout=30)
                assert r.status_code == 200, r.text
                answers[image_id].add(r.json()["masks"][0]["rle"]["counts"])
                got = stub.Segment(
                    pb.SegmentRequest(image_id=image_id, points=[pb.Point(x=60, y=40)], labels=[1]),
                    timeout=30,
                )
                answers[image_id].add(got.masks[0].rle.counts)
    assert all(len(found) == 1 for found in answers.values()), answers

    # a cached image answers on the decoder without a forward
    r = httpx.post(f"{dec_b.url}/v1/embed", content=images[0], headers=PNG, timeout=30)
    assert r.json()["cached"] is True
    assert embeds_served(encoder) == 2

    # the encoder's refusal comes back through the decoder as the same code
    r = httpx.post(f"{dec_a.url}/v1/embed", content=images[0][:100], headers=PNG, timeout=30)
    assert r.status_code == 400 and r.json()["code"] == "invalid_image"

    # a decoder that cannot read the encoder's cache (another key prefix) fails loudly
    settings = make_settings(
        role="decoder",
        encoder_grpc_target=encoder.env["EDGESAM_ENCODER_GRPC_TARGET_SELF"],
        redis_url=encoder.env["EDGESAM_REDIS_URL"],
        redis_key_prefix=encoder.env["EDGESAM_REDIS_KEY_PREFIX"] + "other:",
    )
    service = apply_role(SegmentationService(settings, backend=FakeBackend()), settings)
    with serve_app(create_app(settings, service)) as misconfigured:
        assert wait_until(lambda: service.state == "ready", 30)
        r = httpx.post(
            f"{misconfigured.url}/v1/embed", content=png_bytes(test_image(seed=7)), headers=PNG
        )
        assert r.status_code == 503 and r.json()["code"] == "encoder_unavailable"
        assert "EDGESAM_REDIS_KEY_PREFIX" in r.json()["message"]

    # without the encoder: a bounded wait, then encoder_unavailable; segments go on
    encoder.stop()
    fresh = png_bytes(test_image(seed=9))
    begin = time.monotonic()
    r = httpx.post(f"{dec_a.url}/v1/embed", content=fresh, headers=PNG, timeout=60)
    assert r.status_code == 503 and r.json()["code"] == "encoder_unavailable", r.text
    assert "retry-after" in r.headers
    with grpc.insecure_channel(dec_b.target) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(image=fresh), timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(info.value.trailing_metadata())["edgesam-error-code"] == "encoder_unavailable"
        got = stub.Segment(pb.SegmentRequest(image_id=ids[2], box=pb.Box(x1=50, y1=50)), timeout=10)
        assert got.masks
    assert time.monotonic() - begin < 20
