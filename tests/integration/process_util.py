"""Service processes (tests.integration.fake_server) on loopback ports, stopped after use."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO_ROOT, free_port


@dataclass
class ServiceProcess:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def health(self, channel: grpc.Channel) -> int:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the service exited early:\n{self.log()}")
                try:
                    ready = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
                    serving = self.health(channel) == health_pb2.HealthCheckResponse.SERVING
                    if ready and serving:
                        return
                except (httpx.HTTPError, grpc.RpcError):
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the service did not become ready:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def spawn(
    tmp_dir: str, module: str = "tests.integration.fake_server", **env: str
) -> ServiceProcess:
    """Start one service process (the fake-backend one unless `module="service"`, the real
    entry point); EDGESAM_* settings from `env`."""
    http_port, grpc_port = free_port(), free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")},
        "EDGESAM_HTTP_HOST": "127.0.0.1",
        "EDGESAM_HTTP_PORT": str(http_port),
        "EDGESAM_GRPC_PORT": str(grpc_port),
        "EDGESAM_DRAIN_SECONDS": "0",
        "EDGESAM_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    log_path = os.path.join(tmp_dir, f"service-{http_port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return ServiceProcess(proc, http_port, grpc_port, log_path, env)


@pytest.fixture
def service_processes(tmp_path) -> Iterator[Callable[..., ServiceProcess]]:  # noqa: ANN001
    """Factory of service processes; every one is killed after the test."""
    started: list[ServiceProcess] = []

    def start(**env: str) -> ServiceProcess:
        proc = spawn(str(tmp_path), **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
