"""TLS on both transports, over real handshakes with a service process (`python -m
service`'s code path, fake backend): HTTPS and gRPC with server credentials, and mTLS
(EDGESAM_TLS_CLIENT_CA_FILE) refusing a client without a certificate from that CA."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT
from tests.integration import process_util
from tests.integration.conftest import png_bytes, test_image
from tests.integration.process_util import ServiceProcess
from tests.integration.tls_util import Pki, make_pki

service_processes = process_util.service_processes  # the fixture


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _https(pki: Pki, client_cert: bool = True, rogue: bool = False) -> httpx.Client:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    if rogue:
        ctx.load_cert_chain(str(pki.rogue_client_cert), str(pki.rogue_client_key))
    elif client_cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return httpx.Client(verify=ctx, timeout=10)


def _channel(proc: ServiceProcess, pki: Pki, client_cert: bool = True) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(proc.target, creds)


def _wait_ready(proc: ServiceProcess, pki: Pki, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with _https(pki) as client:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"the service exited early:\n{proc.log()}")
            try:
                if client.get(f"https://127.0.0.1:{proc.http_port}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the service did not become ready:\n{proc.log()}")


def _start(service_processes, pki: Pki, mtls: bool) -> ServiceProcess:
    env = {
        "EDGESAM_TLS_CERT_FILE": str(pki.server_cert),
        "EDGESAM_TLS_KEY_FILE": str(pki.server_key),
    }
    if mtls:
        env["EDGESAM_TLS_CLIENT_CA_FILE"] = str(pki.ca_cert)
    proc = service_processes(**env)
    _wait_ready(proc, pki)
    return proc


def _grpc_works(proc: ServiceProcess, pki: Pki, client_cert: bool) -> None:
    with _channel(proc, pki, client_cert) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # gRPC health turns SERVING just after HTTP's /readyz does: poll, briefly
        deadline = time.monotonic() + 10
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        stub = pb_grpc.SegmentationStub(channel)
        res = stub.Embed(pb.EmbedRequest(image=png_bytes(test_image())), timeout=10)
        assert len(res.image_id) == 64


def test_tls_on_both_transports(service_processes, pki: Pki) -> None:
    proc = _start(service_processes, pki, mtls=False)
    https = f"https://127.0.0.1:{proc.http_port}"
    with _https(pki, client_cert=False) as client:
        r = client.post(
            f"{https}/v1/embed",
            content=png_bytes(test_image()),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
    # plaintext to the TLS port gets no answer of ours
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{proc.http_port}/healthz", timeout=5)
    # a client that does not trust the CA refuses the server
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https}/healthz", timeout=5)
    _grpc_works(proc, pki, client_cert=False)
    with grpc.insecure_channel(proc.target) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_container_health_probe_speaks_https(service_processes, pki: Pki) -> None:
    proc = _start(service_processes, pki, mtls=False)
    env = {
        **os.environ,
        "EDGESAM_HTTP_PORT": str(proc.http_port),
        "EDGESAM_TLS_CERT_FILE": str(pki.server_cert),
        "EDGESAM_TLS_KEY_FILE": str(pki.server_key),
    }
    probe = [sys.executable, str(REPO_ROOT / "deploy" / "docker" / "healthcheck.py")]
    assert subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0
    plain = {k: v for k, v in env.items() if not k.startswith("EDGESAM_TLS_")}
    assert subprocess.run(probe, env=plain, capture_output=True, timeout=30).returncode == 1


def test_mtls_refuses_clients_without_a_certificate(service_processes, pki: Pki) -> None:
    proc = _start(service_processes, pki, mtls=True)
    https = f"https://127.0.0.1:{proc.http_port}"
    with _https(pki, client_cert=True) as client:
        assert client.get(f"{https}/healthz").status_code == 200
    for kwargs in ({"client_cert": False}, {"rogue": True}):
        with _https(pki, **kwargs) as client:  # type: ignore[arg-type]
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                client.get(f"{https}/healthz")
    _grpc_works(proc, pki, client_cert=True)
    with _channel(proc, pki, client_cert=False) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
