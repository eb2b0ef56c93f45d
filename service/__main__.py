"""`python -m service`: start the service: HTTP, and gRPC beside it when EDGESAM_GRPC_PORT is
non-zero (`extra_servers`).

The configuration is read and checked before anything heavy is imported: the transports, the
core and the engine (torch) are imported inside `serve`, so a bad setting fails in well under
a second with its message.

SIGTERM/SIGINT: readiness goes false at once, requests are still served for
EDGESAM_DRAIN_SECONDS (so load balancers stop sending), then the servers stop. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from pydantic import ValidationError

from service.config import GET_WEIGHTS_HINT, Settings

if TYPE_CHECKING:  # the heavy imports (torch) wait until the configuration is known good
    from service.core import SegmentationService

log = logging.getLogger("service")

ExtraServer = Callable[["SegmentationService"], Awaitable[Any]]


def _server_class() -> type:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn without its own signal handling: `serve` below owns SIGTERM/SIGINT."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return _Server


def extra_servers(settings: Settings) -> list[ExtraServer]:
    """Servers started beside HTTP in the same process: gRPC (service.grpc_server) when
    EDGESAM_GRPC_PORT is non-zero."""
    if not settings.grpc_port:
        return []
    from service.grpc_server import serve_grpc

    return [lambda svc: serve_grpc(svc, settings)]


def http_tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS arguments: EDGESAM_TLS_CERT_FILE/EDGESAM_TLS_KEY_FILE serve HTTPS; with
    EDGESAM_TLS_CLIENT_CA_FILE a client must present a certificate that CA signed (mTLS)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return {}
    import ssl

    options: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert_file),
        "ssl_keyfile": str(settings.tls_key_file),
    }
    if settings.tls_client_ca_file is not None:
        options.update(
            ssl_ca_certs=str(settings.tls_client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED
        )
    return options


def create_app(*args: Any, **kwargs: Any) -> Any:
    """service.http_app.create_app, imported late (torch loads only once config is good)."""
    from service.http_app import create_app as make

    return make(*args, **kwargs)


async def serve(
    settings: Settings,
    service: SegmentationService | None = None,
    servers: list[ExtraServer] | None = None,
) -> int:
    """Run until a signal (after draining) or a failed model start; returns the exit code."""
    import uvicorn

    from service.core import SegmentationService

    service = service or SegmentationService(settings)
    from service.roles import apply_role  # decoder role: forward embeds to the encoders

    apply_role(service, settings)
    app = create_app(settings, service, servers if servers is not None else extra_servers(settings))
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(5, int(settings.drain_seconds)),
        access_log=settings.log_level == "debug",
        **http_tls_options(settings),
    )
    server = _server_class()(config)
    loop = asyncio.get_running_loop()
    exit_code = 0
    drain_task: asyncio.Task | None = None

    async def drain_then_stop() -> None:
        service.begin_drain()
        log.info("stopping in %.0f s (EDGESAM_DRAIN_SECONDS)", settings.drain_seconds)
        await asyncio.sleep(settings.drain_seconds)
        server.should_exit = True

    def on_signal(signum: int) -> None:
        nonlocal drain_task
        if drain_task is None:
            log.info("received %s", signal.Signals(signum).name)
            drain_task = asyncio.ensure_future(drain_then_stop())
        else:
            log.info("second signal: stopping now")
            server.should_exit = True
            server.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)

    async def watch_start() -> None:
        nonlocal exit_code
        while service.state == "loading":
            await asyncio.sleep(0.1)
        if service.state == "failed":
            exit_code = 1
            server.should_exit = True

    watcher = asyncio.ensure_future(watch_start())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        if drain_task is not None:
            drain_task.cancel()
    return exit_code


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"edgesam: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.resolved_checkpoint() is None and not settings.allow_random_weights:
        print(f"edgesam: {GET_WEIGHTS_HINT}", file=sys.stderr)
        return 2
    from engine.runtime import mmap_threshold_for, tune_allocator

    try:
        backend, _, _ = settings.runtime_precision()
    except ValueError:
        backend = None  # `serve` reports the configuration error
    # before the model allocates anything; per backend (see engine/runtime.py)
    tune_allocator(mmap_threshold_for(backend))
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
