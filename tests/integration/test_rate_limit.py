"""Per-key rate limits over both transports: 429 with Retry-After over HTTP, and
RESOURCE_EXHAUSTED with edgesam-error-code rate_limited (and retry-after) over gRPC; one
key's excess never limits another key; off by default; health stays open."""

from __future__ import annotations

import grpc
import pytest

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from service.grpc_errors import ERROR_CODE_KEY, RETRY_AFTER_KEY, metadata_value
from tests.integration import grpc_util

start_grpc_service = grpc_util.start_grpc_service  # the fixture

ALPHA, BRAVO = "alpha-key-0123456789", "bravo-key-9876543210"
IMAGE_ID = "ab" * 32


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def _m(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def test_http_429_with_retry_after_per_key(start_grpc_service) -> None:
    both = start_grpc_service(
        api_keys=f"{ALPHA},{BRAVO}", rate_limit_per_second=0.2, rate_limit_burst=3
    )
    head = f"/v1/embeddings/{IMAGE_ID}"
    codes = [both.http.head(head, headers=_h(ALPHA)).status_code for _ in range(3)]
    assert codes == [404, 404, 404]  # within the burst: answered
    r = both.http.get("/metrics", headers=_h(ALPHA))
    assert r.status_code == 429
    assert r.json()["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 5
    assert both.http.head(head, headers=_h(BRAVO)).status_code == 404  # its own bucket
    assert both.http.get("/healthz").status_code == 200  # open paths are never limited
    assert both.http.get("/readyz").status_code == 200
    # gRPC shares the key's bucket: alpha is over its rate there too
    with pytest.raises(grpc.RpcError) as err:
        both.stub.HasEmbedding(pb.EmbeddingRef(image_id=IMAGE_ID), metadata=_m(ALPHA), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    text = both.http.get("/metrics", headers=_h(BRAVO)).text
    assert 'edgesam_rate_limited_total{transport="http"} 1.0' in text


def test_grpc_resource_exhausted_with_the_code(start_grpc_service) -> None:
    both = start_grpc_service(
        api_keys=f"{ALPHA},{BRAVO}", rate_limit_per_second=0.5, rate_limit_burst=2
    )
    ref = pb.EmbeddingRef(image_id=IMAGE_ID)
    for _ in range(2):
        assert not both.stub.HasEmbedding(ref, metadata=_m(ALPHA), timeout=5).exists
    with pytest.raises(grpc.RpcError) as err:
        both.stub.HasEmbedding(ref, metadata=_m(ALPHA), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = err.value.trailing_metadata()
    assert metadata_value(trailing, ERROR_CODE_KEY) == "rate_limited"
    assert 1 <= int(metadata_value(trailing, RETRY_AFTER_KEY) or 0) <= 2
    # streams are limited when they open
    start = pb.InteractiveRequest(start=pb.SessionStart(image_id=IMAGE_ID))
    with pytest.raises(grpc.RpcError) as err:
        list(both.stub.InteractiveSegment(iter([start]), metadata=_m(ALPHA), timeout=5))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not both.stub.HasEmbedding(ref, metadata=_m(BRAVO), timeout=5).exists
    assert both.http.head(f"/v1/embeddings/{IMAGE_ID}", headers=_h(ALPHA)).status_code == 429


def test_without_keys_the_limit_is_per_client_address(start_grpc_service) -> None:
    both = start_grpc_service(rate_limit_per_second=0.2, rate_limit_burst=2)
    codes = [both.http.head(f"/v1/embeddings/{IMAGE_ID}").status_code for _ in range(3)]
    assert codes == [404, 404, 429]


def test_off_by_default(start_grpc_service) -> None:
    both = start_grpc_service(api_keys=ALPHA)
    codes = {both.http.head(f"/v1/embeddings/{IMAGE_ID}", headers=_h(ALPHA)).status_code
             for _ in range(50)}  # fmt: skip
    assert codes == {404}
