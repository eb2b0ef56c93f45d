"""What clients that decode locally download: a cached embedding as a `.npy` file, and the
decoder in segment-anything's ONNX signature (engine.export.sam_onnx), exported once per model
fingerprint into the engine cache folder.

Nothing here knows about HTTP or gRPC; SegmentationService's local-decoding block calls it.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.compat import to_thread
from service.errors import FeatureUnavailable, InvalidRequest

log = logging.getLogger(__name__)

EMBEDDING_SHAPE = (1, 256, 64, 64)
DECODER_VARIANTS = ("sam", "multimask", "cvat")
# Bumped when engine.export.sam_onnx changes what it writes: old cached files are then not reused.
DECODER_LAYOUT = "2"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")


@dataclass(frozen=True)
class EmbeddingFile:
    """One cached embedding in the cache's dtype, with what a local decoder needs beside it."""

    image_id: str
    array: np.ndarray  # EMBEDDING_SHAPE, float16 or float32
    width: int
    height: int
    fingerprint: str

    @property
    def dtype(self) -> str:
        return str(self.array.dtype)

    @property
    def etag(self) -> str:
        """Content-addressed: the image's hash, the model and the dtype fix every byte."""
        return f'"{self.fingerprint}-{self.image_id}-{self.dtype}"'

    def npy(self) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(self.array), allow_pickle=False)
        return buf.getvalue()

    def raw(self) -> bytes:
        """Little-endian, C order (what gRPC's GetEmbedding carries)."""
        return np.ascontiguousarray(self.array, dtype=self.array.dtype.newbyteorder("<")).tobytes()


def embedding_file(
    image_id: str,
    embedding: object,
    original_size: tuple[int, int],
    dtype: str,
    fingerprint: str,
) -> EmbeddingFile:
    """`embedding` (a 1x256x64x64 float32 tensor holding exactly the cached values) in the
    cache's `dtype`: float16 entries round-trip exactly, nothing is rounded twice."""
    array = np.asarray(embedding.detach().cpu().numpy(), dtype=np.float32)  # type: ignore[attr-defined]
    array = array.reshape(EMBEDDING_SHAPE).astype(dtype)
    h, w = original_size
    return EmbeddingFile(image_id, array, int(w), int(h), fingerprint)


@dataclass(frozen=True)
class DecoderFile:
    path: Path
    variant: str
    fingerprint: str
    etag: str
    size: int


def check_variant(variant: str | None) -> str:
    chosen = (variant or "sam").strip().lower()
    if chosen not in DECODER_VARIANTS:
        raise InvalidRequest(
            f"unknown decoder variant {variant!r}: use one of {', '.join(DECODER_VARIANTS)}"
        )
    return chosen


class DecoderExports:
    """The SAM-signature decoder files of one loaded model: exported on first request (in a
    thread; concurrent requests wait for the one export) and kept in `cache_dir`, keyed by
    the model fingerprint, so restarts and replicas sharing the folder export once."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._files: dict[tuple[str, str], DecoderFile] = {}
        self._lock = asyncio.Lock()

    def path_for(self, fingerprint: str, variant: str) -> Path:
        return self.cache_dir / f"sam-decoder-{fingerprint}-{variant}-v{DECODER_LAYOUT}.onnx"

    async def get(self, variant: str, fingerprint: str, source: object) -> DecoderFile:
        """`source`: a callable returning an EdgeSam module (CPU, float32) to export."""
        key = (fingerprint, variant)
        hit = self._files.get(key)
        if hit is not None:
            return hit
        async with self._lock:
            hit = self._files.get(key)
            if hit is None:
                hit = await to_thread(self._load_or_export, variant, fingerprint, source)
                self._files[key] = hit
        return hit

    def _load_or_export(self, variant: str, fingerprint: str, source: object) -> DecoderFile:
        path = self.path_for(fingerprint, variant)
        if not path.is_file():
            model = source()  # type: ignore[operator]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                from engine.export.sam_onnx import export_sam_decoder

                log.info("exporting the %s decoder for local decoding -> %s", variant, path)
                export_sam_decoder(model, tmp, variant, fingerprint=fingerprint)
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
        return DecoderFile(path, variant, fingerprint, f'"{digest}"', path.stat().st_size)


def export_source(backend: object, checkpoint: Path | None) -> object:
    """A callable giving the EdgeSam module to export for `backend`: a fresh one from the
    checkpoint file when the service loaded one (the backend's own module may be fused,
    half precision or on a GPU), else a CPU float32 copy of the PyTorch module in use.
    FeatureUnavailable when there is neither (a service started from ONNX files)."""
    if checkpoint is not None and Path(checkpoint).suffix in CHECKPOINT_SUFFIXES:

        def from_checkpoint() -> object:
            from engine.loader import build_edge_sam

            return build_edge_sam(checkpoint)

        return from_checkpoint
    torch_backend = getattr(backend, "_torch_decoder", None) or backend
    module = getattr(torch_backend, "model", None)
    from engine.modeling import EdgeSam

    if isinstance(module, EdgeSam):

        def from_module() -> object:
            return copy.deepcopy(module).cpu().float().eval()

        return from_module
    raise FeatureUnavailable(
        "the decoder download is built from a PyTorch checkpoint: this service was started "
        "from ONNX files (set EDGESAM_CHECKPOINT to the .pth or .safetensors)"
    )
