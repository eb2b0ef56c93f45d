"""Settings -> one resolved `engine.backends.registry.BackendArgs` -> a loaded backend.

The registry resolves `auto` (once: the backend and the precision) and translates the
service's knobs into the chosen backend's own options; this module only reads them from the
settings."""

from __future__ import annotations

import logging
from pathlib import Path

from engine.backends.base import Backend
from engine.backends.registry import BackendArgs, create_backend
from engine.precision import check_cpu_precision
from service.config import Settings

log = logging.getLogger(__name__)


def backend_args(settings: Settings, checkpoint: Path | None) -> BackendArgs:
    """The backend this service runs, `auto` (backend and precision) resolved on this
    machine, with the settings' knobs as that backend's options. A CPU precision this CPU
    lacks the units for is refused (ValueError): it would run slower than fp32."""
    device = settings.resolved_device()
    try:
        args = BackendArgs.resolve(
            checkpoint,
            backend=settings.backend,
            device=device,
            precision=settings.precision,
            needs_torch=settings.needs_torch,
            knobs={
                "threads": settings.torch_threads or None,
                "compile": settings.torch_compile,
                "compile_warmup_batch": settings.encode_batch(device)
                if settings.torch_compile
                else None,
                "triton_mixer": settings.torch_triton_mixer,
                "decoder_precision": settings.decoder_precision
                if settings.decoder_precision != "fp32"
                else None,
                "engine_cache_dir": str(settings.engine_cache_dir),
            },
            check_units=True,
        )
    except ValueError as exc:
        raise ValueError(f"EDGESAM_PRECISION={settings.precision}: {exc}") from None
    if settings.decoder_precision != "fp32":
        try:
            check_cpu_precision(settings.decoder_precision, "torch")
        except ValueError as exc:
            raise ValueError(
                f"EDGESAM_DECODER_PRECISION={settings.decoder_precision}: {exc}"
            ) from None
    return args


def load_backend(settings: Settings, checkpoint: Path | None) -> Backend:
    """Load the configured backend (blocking: run it in a thread)."""
    args = backend_args(settings, checkpoint)
    how = "chosen by EDGESAM_BACKEND=auto" if args.chosen_by_auto else "EDGESAM_BACKEND"
    precision = args.precision
    if args.precision_chosen_by_auto:
        precision += ", chosen by EDGESAM_PRECISION=auto"
    log.info(
        "loading %s on %s (%s, %s; %s)",
        checkpoint or "random weights",
        args.device,
        args.backend,
        how,
        precision,
    )
    return create_backend(args)
