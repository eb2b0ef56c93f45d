"""Settings -> one resolved `engine.backends.registry.BackendArgs` -> a loaded backend.

The registry resolves `auto` (once) and translates the service's knobs into the chosen
backend's own options; this module only reads them from the settings."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.backends.base import Backend
from engine.backends.registry import BackendArgs, create_backend
from service.config import Settings

log = logging.getLogger(__name__)


def backend_args(settings: Settings, checkpoint: Path | None) -> BackendArgs:
    """The backend this service runs, `auto` resolved on this machine, with the settings'
    knobs as that backend's options."""
    return BackendArgs.resolve(
        checkpoint,
        backend=settings.backend,
        device=settings.resolved_device(),
        precision=settings.precision,
        needs_torch=settings.needs_torch,
        knobs={
            "threads": settings.torch_threads or None,
            "compile": settings.torch_compile,
            "compile_warmup_batch": settings.encode_max_batch if settings.torch_compile else None,
            "triton_mixer": settings.torch_triton_mixer,
            "engine_cache_dir": str(settings.engine_cache_dir),
        },
    )


def load_backend(settings: Settings, checkpoint: Path | None) -> Backend:
    """Load the configured backend (blocking: run it in a thread)."""
    args = backend_args(settings, checkpoint)
    how = "chosen by EDGESAM_BACKEND=auto" if args.chosen_by_auto else "EDGESAM_BACKEND"
    log.info(
        "loading %s on %s (%s, %s)", checkpoint or "random weights", args.device, args.backend, how
    )
    return create_backend(args)
