"""`python -m tests.integration.modules_probe OUT`: runs `python -m service` in this process
exactly as the command does (runpy, `__main__`), and once /readyz answers 200 writes the names
in `sys.modules` to OUT (one a line) and stops the service with SIGTERM, as an operator would."""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path

import httpx


def _probe(out: Path, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                out.write_text("\n".join(sorted(sys.modules)) + "\n")
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    out = Path(sys.argv[1])
    url = f"http://127.0.0.1:{os.environ['EDGESAM_HTTP_PORT']}/readyz"
    threading.Thread(target=_probe, args=(out, url, 240.0), daemon=True).start()
    sys.argv = ["service"]
    runpy.run_module("service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
