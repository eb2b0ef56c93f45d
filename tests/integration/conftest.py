"""Integration fixtures: a real service (real app, real uvicorn on loopback) with either the
deterministic fake backend or the real model, and an HTTP client for it."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.core import SegmentationService
from service.http_app import create_app
from tests.conftest import UvicornThread, wait_until
from tests.fake_backend import FakeBackend


@dataclass
class RunningService:
    server: UvicornThread
    service: SegmentationService
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: no API keys, small limits, no gRPC; env ignored where given."""
    base: dict[str, object] = {"grpc_port": 0, "drain_seconds": 0}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def start_service() -> Iterator[Callable[..., RunningService]]:
    """Factory: start_service(backend=None, wait_ready=True, **settings) -> RunningService.
    backend defaults to a FakeBackend; every service is stopped after the test."""
    running: list[RunningService] = []

    def start(
        backend: object | None = None, wait_ready: bool = True, **overrides: object
    ) -> RunningService:
        settings = make_settings(**overrides)
        service = SegmentationService(
            settings, backend=backend or FakeBackend(), random_weights=False
        )
        server = UvicornThread(create_app(settings, service)).start()
        client = httpx.Client(base_url=server.url, timeout=60)
        rs = RunningService(server, service, client)
        running.append(rs)
        if wait_ready:
            assert wait_until(lambda: service.state != "loading", 120), "service did not start"
            assert service.state == "ready", service.failure
        return rs

    yield start
    for rs in running:
        rs.client.close()
        rs.server.stop()


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


test_image.__test__ = False  # type: ignore[attr-defined]
