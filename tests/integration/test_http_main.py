"""`python -m service` as users start it: refusal without weights, random-weights mode,
SIGTERM drain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_until


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")}
    env.update(EDGESAM_WEIGHTS_DIR=str(tmp_path), EDGESAM_GRPC_PORT="0", **extra)
    return env


def test_refuses_to_start_without_weights(repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=repo_root,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "python -m service.weights download" in proc.stderr
    assert "EDGESAM_ALLOW_RANDOM_WEIGHTS=1" in proc.stderr


def test_bad_configuration_fails_fast(repo_root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=repo_root,
        env=_env(tmp_path, EDGESAM_HTTP_PORT="not-a-port"),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "http_port" in proc.stderr


def test_random_weights_mode_and_sigterm_drain(repo_root: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=repo_root,
            env=_env(
                tmp_path,
                EDGESAM_ALLOW_RANDOM_WEIGHTS="1",
                EDGESAM_HTTP_PORT=str(port),
                EDGESAM_HTTP_HOST="127.0.0.1",
                EDGESAM_DRAIN_SECONDS="2",
                EDGESAM_TORCH_THREADS="1",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        assert wait_until(ready, timeout=180, interval=0.5), log.read_text()
        assert proc.poll() is None, log.read_text()
        r = httpx.get(f"{url}/readyz")
        assert r.json()["random_weights"] is True
        assert r.headers["x-edgesam-random-weights"] == "true"
        assert httpx.get(f"{url}/healthz").headers["x-edgesam-random-weights"] == "true"
        assert "RANDOM WEIGHTS" in log.read_text()

        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert wait_until(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 503, timeout=1.5
        )
        assert httpx.get(f"{url}/readyz").json()["status"] == "draining"
        assert httpx.get(f"{url}/healthz").status_code == 200  # still serving while draining
        assert proc.wait(30) == 0
        assert time.monotonic() - sent >= 1.8
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
