"""Shared fixtures: repository path, the reference data (tests/reference, built once per session), a real Redis with a per-test key prefix,
free ports, throwaway redis-server processes, and a uvicorn server in a thread.

Redis: EDGESAM_TEST_REDIS_URL, default redis://127.0.0.1:6379/0 (.ci/run starts one). Tests
never flush it: they write under a unique prefix and delete exactly those keys afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shared copy of the reference data some checkouts have beside them: an extra check only.
SHARED_REFERENCE_DIR = (REPO_ROOT / ".." / "shared" / "reference").resolve()
TEST_REDIS_URL = os.environ.get("EDGESAM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The golden reference folder (case A with its seeded weights, the official ONNX pair, SAM's
    tiny ViT), built from tests/reference/data once per session (tests/reference/materialize.py)."""
    from tests.reference.materialize import materialize

    return materialize(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def shared_reference_dir() -> Path:
    """../shared/reference where the checkout has one (compared in addition, never instead)."""
    if not SHARED_REFERENCE_DIR.is_dir():
        pytest.skip(f"no shared reference copy at {SHARED_REFERENCE_DIR}")
    return SHARED_REFERENCE_DIR


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the shared test Redis; fails (never skips) when it does not answer."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"no Redis at {TEST_REDIS_URL} ({exc}); .ci/run starts one")
    finally:
        client.close()
    return TEST_REDIS_URL


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix`; returns how many."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A unique key prefix for this test; its keys are deleted afterwards."""
    prefix = f"edgesam-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(redis_url, prefix)


class RedisProcess:
    """A throwaway redis-server on its own port (never the shared one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [
                exe,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def redis_process() -> Iterator[Callable[[], RedisProcess]]:
    """Factory of throwaway redis-server processes, all stopped after the test."""
    made: list[RedisProcess] = []

    def make() -> RedisProcess:
        proc = RedisProcess(free_port())
        proc.start()
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


class UvicornThread:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: object, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30.0) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@contextmanager
def serve_app(app: object) -> Iterator[UvicornThread]:
    """Context manager: a running loopback server for `app`."""
    server = UvicornThread(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def uvicorn_server() -> Iterator[Callable[[object], UvicornThread]]:
    """Factory: start apps on loopback; every one is stopped after the test."""
    started: list[UvicornThread] = []

    def start(app: object) -> UvicornThread:
        server = UvicornThread(app).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05
) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
