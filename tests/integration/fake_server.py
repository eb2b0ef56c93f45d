"""`python -m tests.integration.fake_server`: `python -m service` (same settings from
EDGESAM_* variables, same signal handling, HTTP + gRPC, roles) with the deterministic fake
backend instead of model weights, for process-level tests."""

import asyncio
import logging
import os
import sys

from service.__main__ import serve
from service.config import Settings
from service.core import SegmentationService
from tests.fake_backend import FakeBackend


def main() -> int:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {settings.role} %(levelname)s %(name)s: %(message)s",
    )
    delay = float(os.environ.get("FAKE_ENCODE_DELAY_S", "0"))
    service = SegmentationService(
        settings, backend=FakeBackend(encode_delay_s=delay), random_weights=False
    )
    return asyncio.run(serve(settings, service))


if __name__ == "__main__":
    sys.exit(main())
