"""`rediss://` with a password against a real redis-server speaking TLS only (Debian's
build has TLS): the cache stores and reads over it; a wrong password, an untrusted server
certificate, or plaintext to the TLS port leave the cache degraded, never failing."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import torch

from engine.core import ImageEmbedding
from service.cache import TensorCache
from service.metrics import Metrics
from tests.conftest import free_port
from tests.integration.tls_util import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


PASSWORD = "s3cret-redis-pass"


@pytest.fixture
def tls_redis(pki: Pki) -> Iterator[Callable[[bool], int]]:
    """Factory: a TLS-only redis-server (password required; client certificates required
    when asked), its port returned."""
    procs: list[subprocess.Popen] = []

    def start(require_client_cert: bool = False) -> int:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed")
        port = free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(pki.server_cert),
                "--tls-key-file",
                str(pki.server_key),
                "--tls-ca-cert-file",
                str(pki.ca_cert),
                "--tls-auth-clients",
                "yes" if require_client_cert else "no",
                "--requirepass",
                PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return port
            except OSError:
                time.sleep(0.05)
        pytest.fail("the TLS redis-server did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _emb() -> ImageEmbedding:
    g = torch.Generator().manual_seed(0)
    return ImageEmbedding(torch.randn(1, 256, 64, 64, generator=g), (48, 64), (768, 1024))


def _roundtrip(url: str, tls: dict) -> tuple[bool, str | None]:
    """(a second cache read what the first stored through Redis, the first's degraded
    reason)."""

    async def run() -> tuple[bool, str | None]:
        kw = dict(
            fingerprint="fp-tls",
            ttl_seconds=60,
            lru_max_bytes=1 << 20,
            redis_url=url,
            key_prefix="tls:",
            socket_timeout=2,
            connect_timeout=2,
            breaker_failures=1,
            redis_tls=tls,
        )
        a, b = TensorCache(Metrics(), **kw), TensorCache(Metrics(), **kw)  # type: ignore[arg-type]
        await a.put_embedding("img", _emb())
        got = await b.get_embedding("img")
        reason = a.degraded
        await a.close()
        await b.close()
        return got is not None, reason

    return asyncio.run(run())


def test_rediss_with_a_password(tls_redis, pki: Pki) -> None:
    port = tls_redis(False)
    trusted = {"ssl_ca_certs": str(pki.ca_cert)}
    assert _roundtrip(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", trusted) == (True, None)
    ok, reason = _roundtrip(f"rediss://:wrong-password@127.0.0.1:{port}/0", trusted)
    assert not ok and reason is not None
    ok, reason = _roundtrip(  # the server's certificate is not from a trusted CA
        f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", {"ssl_ca_certs": str(pki.other_ca_cert)}
    )
    assert not ok and reason is not None
    ok, reason = _roundtrip(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", {})  # plaintext
    assert not ok and reason is not None


def test_rediss_with_a_client_certificate(tls_redis, pki: Pki) -> None:
    port = tls_redis(True)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    with_cert = {
        "ssl_ca_certs": str(pki.ca_cert),
        "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key),
    }
    assert _roundtrip(url, with_cert) == (True, None)
    ok, reason = _roundtrip(url, {"ssl_ca_certs": str(pki.ca_cert)})
    assert not ok and reason is not None


def test_the_service_reaches_rediss_from_its_settings(
    tls_redis,
    pki: Pki,
    start_service,
) -> None:
    port = tls_redis(True)
    rs = start_service(
        redis_url=f"rediss://:{PASSWORD}@127.0.0.1:{port}/0",
        redis_tls_ca_file=pki.ca_cert,
        redis_tls_cert_file=pki.client_cert,
        redis_tls_key_file=pki.client_key,
    )
    ready = rs.client.get("/readyz").json()
    assert ready["cache"] == {"status": "ok", "detail": "redis + in-process cache"}
