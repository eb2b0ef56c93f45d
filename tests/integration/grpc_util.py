"""A real service with HTTP and gRPC on loopback (one uvicorn thread, one event loop, as
`python -m service` runs them), for the gRPC integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from service.core import SegmentationService
from service.fake_backend import FakeBackend
from service.grpc_server import serve_grpc
from service.http_app import create_app
from tests.conftest import UvicornThread, free_port, wait_until
from tests.integration.conftest import make_settings


@dataclass
class BothTransports:
    server: UvicornThread
    service: SegmentationService
    http: httpx.Client
    channel: grpc.Channel
    stub: pb_grpc.SegmentationStub
    grpc_port: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def start_both(backend: object | None = None, wait_ready: bool = True, **overrides: object):
    port = free_port()
    settings = make_settings(grpc_port=port, **overrides)
    service = SegmentationService(settings, backend=backend or FakeBackend(), random_weights=False)
    app = create_app(settings, service, [lambda svc: serve_grpc(svc, settings)])
    server = UvicornThread(app).start()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 256 << 20)]
    )
    both = BothTransports(
        server,
        service,
        httpx.Client(base_url=server.url, timeout=60),
        channel,
        pb_grpc.SegmentationStub(channel),
        port,
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    if wait_ready:
        assert wait_until(lambda: service.state != "loading", 120), "service did not start"
        assert service.state == "ready", service.failure
        serving = health_pb2.HealthCheckResponse.SERVING
        assert wait_until(lambda: both.health() == serving, 10)
    return both


def stop_both(both: BothTransports) -> None:
    both.channel.close()
    both.http.close()
    both.server.stop()


@pytest.fixture
def start_grpc_service() -> Iterator[Callable[..., BothTransports]]:
    """Factory: start_grpc_service(backend=None, wait_ready=True, **settings)."""
    started: list[BothTransports] = []

    def start(*args: object, **kwargs: object) -> BothTransports:
        both = start_both(*args, **kwargs)
        started.append(both)
        return both

    yield start
    for both in started:
        stop_both(both)
