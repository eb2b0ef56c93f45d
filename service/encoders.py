"""Where an embedding is computed: `LocalEncoder` runs the backend's encoder in this process
(batched by `engine.batching.EncoderBatcher`, or one image per call with granularity priors);
a decoder-role replica forwards embeds to the encoder pool instead (`EmbedForwarder`,
implemented in service.roles)."""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch

from engine.backends.base import Backend
from engine.batching import EncoderBatcher
from engine.batching import Overloaded as BatcherOverloaded
from engine.core import ImageEmbedding, encode_image_with_priors
from engine.transforms import image_to_pixels
from service.compat import to_thread
from service.config import Settings
from service.errors import Overloaded
from service.executor import BoundedExecutor
from service.metrics import Metrics
from service.schemas import EmbedResult


class Encoder(Protocol):
    """Computes one image's embedding: locally (LocalEncoder) or on a remote encoder."""

    async def encode(self, image: np.ndarray) -> ImageEmbedding: ...

    async def close(self) -> None: ...


class EmbedForwarder(Protocol):
    """Answers embeds elsewhere (a decoder-role replica forwards the image bytes to the
    encoder pool, which stores the embedding in the shared cache): service.roles."""

    async def embed(self, data: bytes, content_type: str | None) -> EmbedResult: ...

    async def close(self) -> None: ...


class LocalEncoder:
    """Runs the backend's encoder here: through engine.batching.EncoderBatcher, or (with
    granularity priors, which need the encoder's stage maps) one image per call on a bounded
    thread pool."""

    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        metrics: Metrics,
        priors: torch.nn.Module | None = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.priors = priors
        self._prep = BoundedExecutor(
            "preprocess", 2, settings.encode_max_queue, metrics, settings.retry_after_seconds
        )
        self._retry_after = settings.retry_after_seconds
        # With priors the encoder's stage maps are needed too: one image per call, unbatched.
        self._batcher: EncoderBatcher | None = None
        if priors is None:
            self._batcher = EncoderBatcher(
                backend,
                max_batch=min(settings.encode_max_batch, backend.info.max_batch),
                max_wait_ms=settings.encode_max_wait_ms,
                max_queue=settings.encode_max_queue,
            )
        self._seen_batches: dict[int, int] = {}
        self._exec = BoundedExecutor(
            "encode",
            settings.encode_workers,
            settings.encode_max_queue,
            metrics,
            settings.retry_after_seconds,
        )

    async def encode(self, image: np.ndarray) -> ImageEmbedding:
        original = (int(image.shape[0]), int(image.shape[1]))
        if self._batcher is not None:
            pixels, input_size = await self._prep.run(image_to_pixels, image)
            start = time.perf_counter()
            try:
                emb = await self._batcher.encode(pixels, input_size)
            except BatcherOverloaded as exc:
                self.metrics.rejected.labels("encode").inc()
                raise Overloaded(
                    "the encoder queue is full; retry shortly", retry_after=self._retry_after
                ) from exc
            self.metrics.encoder_latency.observe(time.perf_counter() - start)
            return ImageEmbedding(emb.float().reshape(1, 256, 64, 64), original, input_size)
        return await self._exec.run(self._encode_sync, image)

    def _encode_sync(self, image: np.ndarray) -> ImageEmbedding:
        """Embedding and granularity-prior proposals of one image (the unbatched path)."""
        start = time.perf_counter()
        emb = encode_image_with_priors(self.backend, self.priors, image)
        self.metrics.encoder_latency.observe(time.perf_counter() - start)
        self.metrics.encoder_batch_size.observe(1)
        return emb

    def sync_metrics(self) -> None:
        """Bring the batch-size histogram up to date with the batcher's own counts."""
        if self._batcher is None:
            return
        for size, count in self._batcher.stats().batch_sizes.items():
            for _ in range(count - self._seen_batches.get(size, 0)):
                self.metrics.encoder_batch_size.observe(size)
            self._seen_batches[size] = count

    async def close(self) -> None:
        if self._batcher is not None:
            await to_thread(self._batcher.close)
        self._exec.shutdown()
        self._prep.shutdown()
