"""Helpers for the browser test: find Debian's Chromium, start the real service on free ports,
launch headless Chromium through Playwright (nothing downloaded), and read masks back."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    """The Chromium binary: $EDGESAM_CHROMIUM, else one on PATH (Debian: /usr/bin/chromium)."""
    explicit = os.environ.get("EDGESAM_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """The real service (`python -m service`, in-process cache, no Redis) in a subprocess."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path

    def wait_ready(self, timeout_s: float = 120) -> str:
        """Block until /readyz says ready; returns the base URL."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the service exited with {self.proc.returncode}:\n{tail}")
            try:
                r = httpx.get(self.url + "readyz", timeout=2)
                if r.status_code == 200 and r.json().get("ready"):
                    return self.url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service was not ready in {timeout_s} s")
            time.sleep(0.2)


@contextmanager
def service_process(checkpoint: Path, log_path: Path) -> Iterator[ServiceProcess]:
    """Start the service on free ports (it loads the model in the background: call
    wait_ready() before using it); SIGTERM at the end."""
    http_port, grpc_port = free_port(), free_port()
    while grpc_port == http_port:
        grpc_port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EDGESAM_") or k == "EDGESAM_CHROMIUM"
    }
    env.update(
        EDGESAM_CHECKPOINT=str(checkpoint),
        EDGESAM_HTTP_HOST="127.0.0.1",
        EDGESAM_HTTP_PORT=str(http_port),
        EDGESAM_GRPC_PORT=str(grpc_port),
        EDGESAM_DRAIN_SECONDS="0",
        EDGESAM_TORCH_THREADS="2",
        PYTHONUNBUFFERED="1",
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield ServiceProcess(proc, f"http://127.0.0.1:{http_port}/", log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def chromium_browser(executable: str):  # noqa: ANN201
    """Headless Debian Chromium through Playwright (no browser download). Playwright gives
    the browser a fresh temporary --user-data-dir and removes it afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser, viewport: dict | None = None):  # noqa: ANN001, ANN201
    """A page in its own fresh browser context (no shared storage or cache)."""
    context = browser.new_context(
        viewport=viewport or {"width": 1280, "height": 860}, accept_downloads=True
    )
    try:
        page = context.new_page()
        page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
        page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
        yield page
    finally:
        context.close()


def data_url_to_mask(data_url: str) -> np.ndarray:
    """A PNG data URL (white = set) -> bool HxW."""
    payload = data_url.split(",", 1)[1]
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    return np.asarray(image.convert("L")) > 127


def png_file_to_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def describe_difference(got: np.ndarray, want: np.ndarray) -> str:
    diff = got != want
    ys, xs = np.nonzero(diff)
    where = f", first at (x={xs[0]}, y={ys[0]})" if len(xs) else ""
    return f"{int(diff.sum())} pixels differ (drawn {int(got.sum())}, API {int(want.sum())}){where}"
