"""Settings -> one resolved `engine.backends.registry.BackendArgs` -> a loaded backend.

The registry resolves `auto` and translates the service's knobs into each backend's own
options; this module only reads them from the settings."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.backends.base import Backend
from engine.backends.registry import BackendArgs, create_backend, serving_options
from service.config import Settings

log = logging.getLogger(__name__)


def backend_args(settings: Settings, checkpoint: Path | None) -> BackendArgs:
    """The backend this service runs, `auto` resolved on this machine (`Settings.runtime`)."""
    backend, device = settings.runtime()
    options = serving_options(
        backend,
        threads=settings.torch_threads or None,
        compile=settings.torch_compile,
        compile_warmup_batch=settings.encode_max_batch if settings.torch_compile else None,
        triton_mixer=settings.torch_triton_mixer,
        engine_cache_dir=str(settings.engine_cache_dir),
    )
    return BackendArgs.resolve(
        checkpoint,
        backend=backend,
        device=device,
        precision=settings.precision,
        options=options,
    )


def load_backend(settings: Settings, checkpoint: Path | None) -> Backend:
    """Load the configured backend (blocking: run it in a thread)."""
    args = backend_args(settings, checkpoint)
    chosen = (
        f"{args.backend}, chosen by EDGESAM_BACKEND=auto"
        if settings.backend == "auto"
        else args.backend
    )
    log.info("loading %s on %s (%s)", checkpoint or "random weights", args.device, chosen)
    return create_backend(args)
