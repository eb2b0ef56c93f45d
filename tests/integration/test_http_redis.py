"""Redis outages: stopped mid-run and restarted, and frozen (slow) — on a throwaway
redis-server, never the shared one."""

import signal
import time

import redis

from tests.conftest import wait_until
from tests.integration.conftest import png_bytes, test_image

PNG = {"content-type": "image/png"}


def _embed(rs, seed: int) -> dict:  # type: ignore[no-untyped-def]
    r = rs.client.post("/v1/embed", content=png_bytes(test_image(seed=seed)), headers=PNG)
    assert r.status_code == 200, r.text
    return r.json()


def _errors(rs) -> float:  # type: ignore[no-untyped-def]
    return sum(
        s.value
        for m in rs.service.metrics.cache_errors.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def test_redis_stopped_and_restarted(start_service, redis_process, caplog) -> None:
    server = redis_process()
    opts = dict(
        redis_url=server.url,
        redis_socket_timeout=0.3,
        redis_connect_timeout=0.3,
        redis_retry_seconds=0.2,
    )
    rs = start_service(**opts)
    a = _embed(rs, 1)
    assert rs.client.get("/readyz").json()["cache"]["status"] == "ok"

    server.stop()
    ready = rs.client.get("/readyz")
    assert ready.status_code == 200  # still serving
    assert ready.json()["status"] == "degraded"
    assert ready.json()["cache"]["status"] == "degraded"
    seg = rs.client.post("/v1/segment", json={"image_id": a["image_id"], "box": [1, 1, 50, 50]})
    assert seg.status_code == 200  # from the in-process cache
    b = _embed(rs, 2)  # computed, kept in-process, Redis write fails quietly
    assert b["cached"] is False
    seg = rs.client.post("/v1/segment", json={"image_id": b["image_id"], "box": [1, 1, 50, 50]})
    assert seg.status_code == 200
    assert _errors(rs) >= 1
    metrics = rs.client.get("/metrics").text
    assert "edgesam_redis_up 0.0" in metrics
    assert any("redis unavailable" in rec.getMessage() for rec in caplog.records)

    server.start()  # same port, empty
    assert wait_until(
        lambda: rs.client.get("/readyz").json()["cache"]["status"] == "ok", timeout=10
    )
    c = _embed(rs, 3)
    client = redis.Redis.from_url(server.url)
    assert client.exists(rs.service.cache.embedding_key(c["image_id"])) == 1
    client.close()
    assert "edgesam_redis_up 1.0" in rs.client.get("/metrics").text

    # A fresh replica sees only what Redis holds: b was never stored there (404 -> re-embed).
    other = start_service(**opts)
    r = other.client.post("/v1/segment", json={"image_id": b["image_id"], "box": [1, 1, 5, 5]})
    assert r.status_code == 404 and r.json()["code"] == "embedding_not_found"
    assert _embed(other, 2)["cached"] is False
    assert _embed(other, 3)["cached"] is True


def test_frozen_redis_costs_at_most_the_timeout(start_service, redis_process) -> None:
    server = redis_process()
    rs = start_service(
        redis_url=server.url,
        redis_socket_timeout=0.3,
        redis_bulk_socket_timeout=0.6,  # embeddings' own, longer timeout (5 s by default)
        redis_connect_timeout=0.3,
        redis_retry_seconds=30,
    )
    a = _embed(rs, 1)
    server.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        start = time.perf_counter()
        b = _embed(rs, 2)
        assert b["cached"] is False
        first = time.perf_counter() - start
        start = time.perf_counter()
        for image_id in (a["image_id"], b["image_id"]):
            r = rs.client.post("/v1/segment", json={"image_id": image_id, "box": [1, 1, 50, 50]})
            assert r.status_code == 200
        later = time.perf_counter() - start
    finally:
        server.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    # the embed's GET and SET wait for the bulk timeout each, the first refinement mask's SET
    # for the small one: three failures in a row open the breaker (EDGESAM_REDIS_BREAKER_FAILURES)
    assert first < 3.0
    assert later < 1.0  # open: Redis is not waited for again
