"""Tenant isolation (EDGESAM_TENANT_ISOLATION) over both transports: with API keys, one
key's embeddings and masks are invisible to another key (HEAD/HasEmbedding, DELETE,
segment, refinement, sessions answer not found), and Redis keys carry a tenant id derived
from the key, never the key."""

from __future__ import annotations

import grpc
import pytest
import redis

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from service.tenancy import tenant_id
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image

start_grpc_service = grpc_util.start_grpc_service  # the fixture

ALPHA, BRAVO = "alpha-key-0123456789", "bravo-key-9876543210"
PNG = {"content-type": "image/png"}


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _m(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def _start(start_grpc_service, redis_url: str, prefix: str, isolation: bool):  # type: ignore[no-untyped-def]
    return start_grpc_service(
        api_keys=f"{ALPHA},{BRAVO}",
        tenant_isolation=isolation,
        redis_url=redis_url,
        redis_key_prefix=prefix,
    )


def test_http_tenants_do_not_see_each_other(
    start_grpc_service, redis_url: str, redis_prefix: str
) -> None:
    both = _start(start_grpc_service, redis_url, redis_prefix, True)
    http = both.http
    image = png_bytes(test_image(seed=5))
    a = http.post("/v1/embed", content=image, headers={**PNG, **_h(ALPHA)}).json()
    image_id = a["image_id"]
    seg_a = http.post(
        "/v1/segment", json={"image_id": image_id, "box": [1, 1, 40, 40]}, headers=_h(ALPHA)
    )
    assert seg_a.status_code == 200
    mask_id = seg_a.json()["mask_input_id"]

    assert http.head(f"/v1/embeddings/{image_id}", headers=_h(ALPHA)).status_code == 200
    assert http.head(f"/v1/embeddings/{image_id}", headers=_h(BRAVO)).status_code == 404
    r = http.post(
        "/v1/segment", json={"image_id": image_id, "box": [1, 1, 40, 40]}, headers=_h(BRAVO)
    )
    assert r.status_code == 404 and r.json()["code"] == "embedding_not_found"
    r = http.delete(f"/v1/embeddings/{image_id}", headers=_h(BRAVO))
    assert r.status_code == 404
    assert http.head(f"/v1/embeddings/{image_id}", headers=_h(ALPHA)).status_code == 200

    # bravo embeds the same bytes: its own copy (computed, not A's), and A's mask stays A's
    b = http.post("/v1/embed", content=image, headers={**PNG, **_h(BRAVO)}).json()
    assert b["image_id"] == image_id and b["cached"] is False
    r = http.post(
        "/v1/segment",
        json={"image_id": image_id, "box": [1, 1, 40, 40], "mask_input_id": mask_id},
        headers=_h(BRAVO),
    )
    assert r.status_code == 404 and r.json()["code"] == "mask_input_not_found"
    assert http.delete(f"/v1/embeddings/{image_id}", headers=_h(BRAVO)).status_code == 204
    assert http.head(f"/v1/embeddings/{image_id}", headers=_h(ALPHA)).status_code == 200

    client = redis.Redis.from_url(redis_url)
    keys = [k.decode() for k in client.scan_iter(match=f"{redis_prefix}*")]
    client.close()
    alpha = f"{redis_prefix}t:{tenant_id(ALPHA.encode())}:"
    assert keys and all(k.startswith(alpha) for k in keys), keys
    assert not any(ALPHA in k or BRAVO in k for k in keys)


def test_grpc_tenants_do_not_see_each_other(
    start_grpc_service, redis_url: str, redis_prefix: str
) -> None:
    both = _start(start_grpc_service, redis_url, redis_prefix, True)
    stub = both.stub
    image = png_bytes(test_image(seed=6))
    image_id = stub.Embed(pb.EmbedRequest(image=image), metadata=_m(ALPHA), timeout=30).image_id
    ref = pb.EmbeddingRef(image_id=image_id)
    assert stub.HasEmbedding(ref, metadata=_m(ALPHA), timeout=10).exists
    assert not stub.HasEmbedding(ref, metadata=_m(BRAVO), timeout=10).exists
    for call in (
        lambda: stub.DeleteEmbedding(ref, metadata=_m(BRAVO), timeout=10),
        lambda: stub.Segment(
            pb.SegmentRequest(image_id=image_id, box=pb.Box(x0=1, y0=1, x1=30, y1=30)),
            metadata=_m(BRAVO),
            timeout=10,
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # an interactive session of bravo's cannot open alpha's embedding
    start = pb.InteractiveRequest(start=pb.SessionStart(image_id=image_id))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.InteractiveSegment(iter([start]), metadata=_m(BRAVO), timeout=10))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    replies = list(stub.InteractiveSegment(iter([start]), metadata=_m(ALPHA), timeout=10))
    assert replies[0].started.image_id == image_id
    # over HTTP too: the same tenant for the same key on either transport
    assert both.http.head(f"/v1/embeddings/{image_id}", headers=_h(ALPHA)).status_code == 200
    assert both.http.head(f"/v1/embeddings/{image_id}", headers=_h(BRAVO)).status_code == 404


def test_without_isolation_keys_share_one_namespace(
    start_grpc_service, redis_url: str, redis_prefix: str
) -> None:
    both = _start(start_grpc_service, redis_url, redis_prefix, False)
    image = png_bytes(test_image(seed=7))
    image_id = both.http.post("/v1/embed", content=image, headers={**PNG, **_h(ALPHA)}).json()[
        "image_id"
    ]
    assert both.http.head(f"/v1/embeddings/{image_id}", headers=_h(BRAVO)).status_code == 200
    assert both.stub.HasEmbedding(
        pb.EmbeddingRef(image_id=image_id), metadata=_m(BRAVO), timeout=10
    ).exists


def test_isolation_needs_api_keys() -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="EDGESAM_TENANT_ISOLATION"):
        Settings(tenant_isolation=True, api_keys=[])  # type: ignore[call-arg]
