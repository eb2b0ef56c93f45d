"""The service core: SegmentationService's life cycle (load, warm up, open the cache, drain)
and its operations (embed, segment, everything, exists/delete, readiness).

Transports (service.http_app, service.grpc_server) call these methods with schema objects and
map `service.errors.ServiceError` through the one error table; nothing here knows about
either. The pieces it is built from live beside it: service.executor (bounded thread pools),
service.encoders (where embeddings are computed), service.prompts (prompt validation),
service.backend (settings to a loaded backend, through engine.backends.registry).

    svc = SegmentationService(settings)         # or backend=<any engine Backend> in tests
    await svc.start()                           # loads weights (in a thread), warms up
    res = await svc.embed(png_bytes, "image/png")
    out = await svc.segment(SegmentRequest(image_id=res.image_id, points=[[x, y]], labels=[1]))
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import numpy as np
import torch

from engine.amg import EdgeSamAutomaticMaskGenerator
from engine.backends.base import Backend, BackendError, UnsupportedPrompt
from engine.core import (
    ImageEmbedding,
    decode_points,
    prompts_to_points,
    with_prior_box,
)
from engine.priors import load_priors
from service import codecs, tenancy
from service.backend import load_backend
from service.cache import TensorCache
from service.compat import to_thread
from service.config import GET_WEIGHTS_HINT, Settings
from service.encoders import EmbedForwarder, Encoder, LocalEncoder
from service.errors import (
    BackendFailure,
    EmbeddingNotFound,
    EncoderUnavailable,
    InvalidPrompt,
    MaskInputNotFound,
    NotReady,
    ServiceError,
    UnsupportedPromptError,
)
from service.executor import BoundedExecutor
from service.local_decode import (
    DECODER_VARIANTS,
    EMBEDDING_SHAPE,
    DecoderExports,
    DecoderFile,
    EmbeddingFile,
    check_variant,
    embedding_file,
    export_source,
)
from service.metrics import Metrics
from service.multi_prompt import ObjectPrompts, decode_objects
from service.prompts import validate_prompts
from service.schemas import (
    ComponentStatus,
    EmbeddingSpec,
    EmbedResult,
    EverythingMask,
    EverythingRequest,
    EverythingResult,
    MaskItem,
    ModelInfo,
    ModelList,
    Readiness,
    SegmentRequest,
    SegmentResult,
)
from service.url_fetch import fetch_image

log = logging.getLogger(__name__)


class _Abandoned(Exception):
    """The request computing an embedding was cancelled before it finished; the requests
    waiting on it compute it themselves."""


class SegmentationService:
    """The one core behind every transport. Safe for concurrent requests: it holds no
    per-image state besides the cache."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend | None = None,
        encoder: Encoder | None = None,
        random_weights: bool | None = None,
        forwarder: EmbedForwarder | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.backend = backend
        self.encoder = encoder
        self.forwarder = forwarder
        self.priors: torch.nn.Module | None = None
        self.cache: TensorCache | None = None
        self.checkpoint = settings.resolved_checkpoint() if backend is None else None
        if random_weights is None:
            random_weights = backend is None and self.checkpoint is None
        self.random_weights = random_weights
        self.state = "loading"  # loading -> ready | failed; draining after begin_drain()
        self.failure: str | None = None
        self._draining = False
        self._inflight: dict[str, asyncio.Future[ImageEmbedding]] = {}
        self._decoder_exports: DecoderExports | None = None
        self._decode = BoundedExecutor(
            "decode",
            settings.decode_workers,
            settings.decode_max_queue,
            self.metrics,
            settings.retry_after_seconds,
        )
        self._images = BoundedExecutor(
            "image", 2, settings.encode_max_queue, self.metrics, settings.retry_after_seconds
        )
        self._everything = BoundedExecutor(
            "everything",
            settings.everything_max_concurrency,
            settings.everything_max_concurrency,
            self.metrics,
            settings.retry_after_seconds,
        )

    # -- life cycle -----------------------------------------------------------------------
    def check_startable(self) -> None:
        """Refuse to start without weights unless random weights were allowed explicitly."""
        if (
            self.backend is None
            and self.checkpoint is None
            and not self.settings.allow_random_weights
        ):
            raise SystemExit(f"edgesam: {GET_WEIGHTS_HINT}")

    async def start(self) -> None:
        """Load the model (in a thread), warm it up, prove it answers, open the cache."""
        try:
            if self.backend is None:
                self.check_startable()
                self.backend = await to_thread(self._load_backend)
            if self.random_weights:
                log.warning(
                    "RUNNING WITH RANDOM WEIGHTS: masks are meaningless. %s", GET_WEIGHTS_HINT
                )
            backend = self.backend
            # a decoder-only replica never encodes: warming the encoder would only cost memory
            await to_thread(backend.warmup, self.settings.role != "decoder")
            if self.settings.role != "decoder":
                batch = self.settings.encode_batch(backend.info.device)
                await to_thread(backend.warmup_batch, min(batch, backend.info.max_batch))
            health = await to_thread(backend.health)
            if not health.ok:
                raise BackendError(f"warm-up health check failed: {health.error}")
            s = self.settings
            self.cache = TensorCache(
                self.metrics,
                fingerprint=backend.fingerprint,
                ttl_seconds=s.cache_ttl_seconds,
                lru_max_bytes=s.lru_max_bytes,
                redis_url=s.redis_url,
                key_prefix=s.redis_key_prefix,
                socket_timeout=s.redis_socket_timeout,
                connect_timeout=s.redis_connect_timeout,
                retry_seconds=s.redis_retry_seconds,
                max_connections=s.redis_max_connections,
                dtype=s.cache_storage_dtype(backend.info.precision),
                with_priors=s.priors_checkpoint is not None,
                mask_ttl_seconds=s.mask_ttl_seconds,
                bulk_socket_timeout=s.redis_bulk_socket_timeout,
                breaker_failures=s.redis_breaker_failures,
                redis_tls=s.redis_tls_options(),
            )
            if s.priors_checkpoint is not None and self.priors is None:
                device = self.backend.info.device
                self.priors = await to_thread(load_priors, s.priors_checkpoint, device=device)
                log.info("granularity priors on, from %s", s.priors_checkpoint)
            if self.encoder is None and s.role != "decoder":
                self.encoder = LocalEncoder(backend, s, self.metrics, self.priors)
            degraded = await self.cache.check()
            if degraded:
                log.warning("starting with the cache degraded: %s", degraded)
        except BaseException as exc:
            self.state = "failed"
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error(
                "model start-up failed: %s", self.failure, exc_info=not isinstance(exc, SystemExit)
            )
            raise
        self.state = "ready"
        self.metrics.ready.set(0 if self._draining else 1)
        info = self.backend.info
        self.metrics.backend_info.labels(info.name, info.device, info.precision).set(1)
        log.info(
            "ready: backend=%s device=%s precision=%s fingerprint=%s cache=%s (%s)",
            info.name,
            info.device,
            info.precision,
            info.fingerprint,
            "redis+lru" if s.redis_url else "lru",
            self.cache.dtype,
        )

    def _load_backend(self) -> Backend:
        return load_backend(self.settings, self.checkpoint)

    def begin_drain(self) -> None:
        """Readiness goes false; requests are still served until the process stops."""
        if not self._draining:
            log.info("draining: readiness is now false")
        self._draining = True
        self.metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self._draining

    async def close(self) -> None:
        if self.encoder is not None:
            await self.encoder.close()
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.cache is not None:
            await self.cache.close()
        for pool in (self._decode, self._images, self._everything):
            pool.shutdown()

    def _require_started(self) -> tuple[Backend, TensorCache]:
        if self.state != "ready" or self.backend is None or self.cache is None:
            if self.state == "failed":
                raise NotReady("the model failed to load; see the server log")
            raise NotReady("the model is still loading; retry shortly", retry_after=2)
        return self.backend, self.cache

    # -- operations -----------------------------------------------------------------------
    async def embed(self, data: bytes, content_type: str | None) -> EmbedResult:
        """Image bytes -> image_id. A cache hit answers without decoding the image, and
        concurrent embeds of the same bytes run the encoder once."""
        _, cache = self._require_started()
        codecs.check_content_type(content_type)
        image_id = codecs.content_hash(data)
        hit = await cache.get_embedding(image_id)
        if hit is not None:
            return self._embed_result(image_id, hit[0], True, hit[1])
        if self.forwarder is not None:
            return await self.forwarder.embed(data, content_type)
        # per tenant (service.tenancy): a waiter's embedding must land in its own namespace
        flight = f"{tenancy.current() or ''}:{image_id}"
        while True:
            running = self._inflight.get(flight)
            if running is None:
                break
            try:
                emb = await asyncio.shield(running)
            except _Abandoned:
                continue  # its owner was cancelled: compute it here (or wait on a newer one)
            return self._embed_result(image_id, emb, True, cache.ttl)
        if self.encoder is None:
            raise EncoderUnavailable(
                "this replica runs the decoder role and has no encoder configured "
                "(EDGESAM_ENCODER_GRPC_TARGET)"
            )
        future: asyncio.Future[ImageEmbedding] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight[flight] = future
        try:
            image = await self._images.run(
                codecs.decode_image, data, content_type, self.settings.max_image_pixels
            )
            try:
                emb = await self.encoder.encode(image)
            except BackendError as exc:
                log.exception("encoder failed")
                raise BackendFailure("the encoder failed; see the server log") from exc
            await cache.put_embedding(image_id, emb)
            future.set_result(emb)
        except asyncio.CancelledError:
            # This request's own cancellation (a gRPC deadline, a client gone) is no error of
            # the requests waiting on it: raised in them it ended them with no answer (HTTP
            # fell through to the server's plain-text 500).
            if not future.done():
                future.set_exception(_Abandoned())
            raise
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            raise
        finally:
            self._inflight.pop(flight, None)
        return self._embed_result(image_id, emb, False, cache.ttl)

    async def embed_url(self, url: str) -> EmbedResult:
        """An image fetched from an allow-listed URL (service.url_fetch), then `embed`. The
        bytes are sniffed: the remote server's Content-Type is not trusted."""
        self._require_started()
        s = self.settings
        data, _ = await fetch_image(
            url, s.url_allowlist, s.url_max_bytes, s.url_timeout_seconds, s.url_max_redirects
        )
        return await self.embed(data, None)

    async def embed_many(
        self, images: list[tuple[bytes, str | None]]
    ) -> list[EmbedResult | ServiceError]:
        """Several images, one outcome each in order: a failed image (a ServiceError) does
        not fail the others. A few at a time, so that the encoder batches them without one
        request filling the bounded encode queue (which would refuse its own parts)."""
        backend, _ = self._require_started()
        s = self.settings
        batch = s.encode_batch(backend.info.device)
        gate = asyncio.Semaphore(max(1, min(batch, s.encode_max_queue // 2)))

        async def one(data: bytes, content_type: str | None) -> EmbedResult:
            async with gate:
                return await self.embed(data, content_type)

        outcomes = await asyncio.gather(
            *(one(data, content_type) for data, content_type in images), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ServiceError):
                raise outcome  # a bug, not a bad image: the transports answer internal_error
        return list(outcomes)  # type: ignore[arg-type]

    @staticmethod
    def _embed_result(image_id: str, emb: ImageEmbedding, cached: bool, ttl: int) -> EmbedResult:
        h, w = emb.original_size
        return EmbedResult(image_id=image_id, width=w, height=h, cached=cached, expires_in=ttl)

    async def _embedding(self, cache: TensorCache, image_id: str) -> ImageEmbedding:
        hit = await cache.get_embedding(image_id)
        if hit is None:
            raise EmbeddingNotFound(
                f"no embedding for image_id {image_id} (unknown or expired); "
                "POST the image to /v1/embed again"
            )
        return hit[0]

    async def _mask_input(self, cache: TensorCache, mask_id: str, image_id: str) -> torch.Tensor:
        got = await cache.get_mask(mask_id)
        if got is None:
            raise MaskInputNotFound(
                f"no stored mask for mask_input_id {mask_id} (unknown or expired)"
            )
        if got[1] and got[1] != image_id:
            raise MaskInputNotFound(
                f"mask_input_id {mask_id} is a mask of another image; refine "
                "with a mask_input_id from an answer for this image_id"
            )
        return got[0]

    async def segment(self, req: SegmentRequest) -> SegmentResult:
        backend, cache = self._require_started()
        emb = await self._embedding(cache, req.image_id)
        if req.prompts is not None:
            return await self._segment_objects(backend, cache, emb, req)
        points, labels, boxes = validate_prompts(
            req, emb.original_size, self.settings.max_points, self.settings.max_boxes
        )
        mask_input = None
        if req.mask_input_id is not None:
            mask_input = await self._mask_input(cache, req.mask_input_id, req.image_id)
        items, best = await self._decode.run(
            self._segment_sync, backend, emb, points, labels, boxes, mask_input, req
        )
        return await self._segment_result(cache, req, emb, items, best)

    @staticmethod
    async def _segment_result(
        cache: TensorCache,
        req: SegmentRequest,
        emb: ImageEmbedding,
        items: list[MaskItem],
        best: list[torch.Tensor],
    ) -> SegmentResult:
        """The answer, with each prompt's best low-res mask stored for refinement."""
        mask_ids = []
        for logits in best:
            mask_id = uuid.uuid4().hex
            await cache.put_mask(mask_id, req.image_id, logits)
            mask_ids.append(mask_id)
        h, w = emb.original_size
        return SegmentResult(
            image_id=req.image_id,
            width=w,
            height=h,
            masks=items,
            mask_input_id=mask_ids[0] if mask_ids else None,
            mask_input_ids=mask_ids,
        )

    async def _segment_objects(
        self, backend: Backend, cache: TensorCache, emb: ImageEmbedding, req: SegmentRequest
    ) -> SegmentResult:
        """`prompts`: each object its own points, box and mask input (service.multi_prompt)."""
        prompts = req.prompts or []
        if not prompts:
            raise InvalidPrompt("prompts is empty: give at least one object")
        if len(prompts) > self.settings.max_boxes:
            raise InvalidPrompt(
                f"{len(prompts)} prompts; at most {self.settings.max_boxes} are accepted"
            )
        objects = []
        for i, prompt in enumerate(prompts):
            single = SegmentRequest.model_construct(
                points=prompt.points, labels=prompt.labels, box=prompt.box, boxes=None
            )
            try:
                points, labels, boxes = validate_prompts(
                    single, emb.original_size, self.settings.max_points, 1
                )
            except InvalidPrompt as exc:
                raise InvalidPrompt(f"prompts[{i}]: {exc.message}") from exc
            objects.append(ObjectPrompts(points, labels, boxes))
        mask_inputs = [
            None
            if p.mask_input_id is None
            else await self._mask_input(cache, p.mask_input_id, req.image_id)
            for p in prompts
        ]
        items, best = await self._decode.run(
            decode_objects, backend, emb, objects, mask_inputs, req, self.metrics, _finite
        )
        return await self._segment_result(cache, req, emb, items, best)

    def _segment_sync(
        self,
        backend: Backend,
        emb: ImageEmbedding,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        mask_input: torch.Tensor | None,
        req: SegmentRequest,
    ) -> tuple[list[MaskItem], list[torch.Tensor]]:
        start = time.perf_counter()
        try:
            coords, point_labels = prompts_to_points(emb.original_size, points, labels, boxes)
            if req.use_priors and emb.proposals is not None:
                coords, point_labels = with_prior_box(emb, coords, point_labels)
            res = decode_points(backend, emb, coords, point_labels, mask_input, req.num_masks)
        except UnsupportedPrompt as exc:
            raise UnsupportedPromptError(str(exc)) from exc
        except BackendError as exc:
            log.exception("decoder failed")
            raise BackendFailure("the decoder failed; see the server log") from exc
        self.metrics.decoder_latency.observe(time.perf_counter() - start)
        items: list[MaskItem] = []
        best: list[torch.Tensor] = []
        scores = res.iou_predictions.tolist()
        stability = res.stability_scores.tolist()
        for b in range(res.low_res_logits.shape[0]):
            for c in range(res.low_res_logits.shape[1]):
                mask = res.masks((b, c)).numpy()
                encoded = codecs.encode_mask(mask, req.output, _polygon_options(req))
                items.append(
                    MaskItem(
                        prompt_index=b,
                        mask_index=c,
                        score=_finite(scores[b][c]),
                        stability_score=_finite(stability[b][c]),
                        **encoded,
                    )
                )
            best.append(res.low_res_logits[b, int(res.iou_predictions[b].argmax())].clone())
        return items, best

    async def everything(self, req: EverythingRequest) -> EverythingResult:
        """Everything mode on a cached embedding (engine.amg, single crop)."""
        backend, cache = self._require_started()
        emb = await self._embedding(cache, req.image_id)
        records = await self._everything.run(self._everything_sync, backend, emb, req)
        h, w = emb.original_size
        return EverythingResult(image_id=req.image_id, width=w, height=h, masks=records)

    def _everything_sync(
        self, backend: Backend, emb: ImageEmbedding, req: EverythingRequest
    ) -> list[EverythingMask]:
        generator = EdgeSamAutomaticMaskGenerator(
            backend,
            points_per_side=req.points_per_side,
            points_per_batch=req.points_per_batch,
            pred_iou_thresh=req.pred_iou_thresh,
            stability_score_thresh=req.stability_score_thresh,
            stability_score_offset=req.stability_score_offset,
            box_nms_thresh=req.box_nms_thresh,
            crop_n_layers=0,
            min_mask_region_area=req.min_mask_region_area,
            output_mode="binary_mask",
        )
        try:
            records = generator.generate_from_embedding(emb)
        except BackendError as exc:
            log.exception("everything mode failed")
            raise BackendFailure("the decoder failed; see the server log") from exc
        records = sorted(records, key=lambda r: -float(r["predicted_iou"]))[: req.max_masks]
        out = []
        for rec in records:
            mask = np.asarray(rec["segmentation"], dtype=bool)
            encoded = codecs.encode_mask(mask, req.output, _polygon_options(req))
            point = rec.get("point_coords") or [[0.0, 0.0]]
            out.append(
                EverythingMask(
                    score=_finite(float(rec["predicted_iou"])),
                    stability_score=_finite(float(rec["stability_score"])),
                    point=(float(point[0][0]), float(point[0][1])),
                    **encoded,
                )
            )
        return out

    async def load_embedding(self, image_id: str) -> ImageEmbedding:
        """The cached embedding of `image_id` (EmbeddingNotFound when absent), for callers
        that hold it across several decodes (the gRPC interactive session)."""
        _, cache = self._require_started()
        return await self._embedding(cache, image_id)

    async def segment_embedding(
        self,
        emb: ImageEmbedding,
        req: SegmentRequest,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[SegmentResult, list[torch.Tensor]]:
        """`segment` on an embedding the caller holds, with previous low-res logits
        (1x256x256) in place of req.mask_input_id; nothing is read from or written to the
        cache. Returns the result (no mask ids) and each prompt's best low-res logits."""
        backend, _ = self._require_started()
        points, labels, boxes = validate_prompts(
            req, emb.original_size, self.settings.max_points, self.settings.max_boxes
        )
        if mask_input is not None and not backend.info.supports_mask_input:
            mask_input = None
        items, best = await self._decode.run(
            self._segment_sync, backend, emb, points, labels, boxes, mask_input, req
        )
        h, w = emb.original_size
        return SegmentResult(image_id=req.image_id, width=w, height=h, masks=items), best

    async def exists(self, image_id: str) -> bool:
        _, cache = self._require_started()
        return await cache.has_embedding(image_id)

    async def delete(self, image_id: str) -> bool:
        """Remove an embedding from this replica's LRU and from Redis."""
        _, cache = self._require_started()
        return await cache.delete_embedding(image_id)

    # -- local decoding (issue 17): embedding and decoder downloads --------------------------
    async def embedding_file(self, image_id: str) -> EmbeddingFile:
        """The cached embedding of `image_id` in the cache's dtype, for clients that decode
        locally (EmbeddingNotFound when absent)."""
        backend, cache = self._require_started()
        emb = await self._embedding(cache, image_id)
        return embedding_file(
            image_id, emb.embedding, emb.original_size, cache.dtype, backend.fingerprint
        )

    async def decoder_file(self, variant: str | None = None) -> DecoderFile:
        """The decoder in segment-anything's ONNX signature (`sam`) or CVAT's (`cvat`) for
        the loaded model: exported on first use, then answered from the engine cache folder."""
        backend, _ = self._require_started()
        chosen = check_variant(variant)
        if self._decoder_exports is None:
            self._decoder_exports = DecoderExports(self.settings.engine_cache_dir)
        source = export_source(backend, self.checkpoint)
        return await self._decoder_exports.get(chosen, backend.fingerprint, source)

    def models(self) -> ModelList:
        """The loaded model, its fingerprint, the embedding's shape and dtype, and the URLs of
        the downloads (relative to the API root)."""
        backend, cache = self._require_started()
        name = self.checkpoint.stem if self.checkpoint is not None else "edge_sam"
        decoders = {
            variant: "/v1/models/decoder.onnx" + ("" if variant == "sam" else f"?variant={variant}")
            for variant in DECODER_VARIANTS
        }
        return ModelList(
            models=[
                ModelInfo(
                    id=name,
                    fingerprint=backend.fingerprint,
                    backend=backend.info.name,
                    precision=backend.info.precision,
                    random_weights=self.random_weights,
                    image_size=1024,
                    embedding=EmbeddingSpec(shape=list(EMBEDDING_SHAPE), dtype=cache.dtype),
                    embedding_url="/v1/embeddings/{image_id}",
                    decoder_url=decoders["sam"],
                    decoder_urls=decoders,
                )
            ]
        )

    # -- health ---------------------------------------------------------------------------
    async def readiness(self) -> Readiness:
        if self.state == "ready":
            model = ComponentStatus(status="ok")
        elif self.state == "failed":
            model = ComponentStatus(status="down", detail=self.failure)
        else:
            model = ComponentStatus(status="loading")
        if self.cache is None:
            cache = ComponentStatus(status="loading")
        elif not self.cache.has_redis:
            cache = ComponentStatus(status="ok", detail="in-process cache only (no Redis)")
        else:
            reason = await self.cache.check()
            cache = (
                ComponentStatus(status="degraded", detail=f"redis unavailable: {reason}")
                if reason
                else ComponentStatus(status="ok", detail="redis + in-process cache")
            )
        if self._draining:
            status = "draining"
        elif self.state != "ready":
            status = "failed" if self.state == "failed" else "loading"
        else:
            status = "degraded" if cache.status == "degraded" else "ok"
        info = self.backend.info if self.backend is not None else None
        backend = (
            {
                "name": info.name,
                "device": info.device,
                "precision": info.precision,
                "fingerprint": info.fingerprint,
            }
            if info is not None
            else {}
        )
        return Readiness(
            ready=self.ready,
            status=status,
            model=model,
            cache=cache,
            random_weights=self.random_weights,
            backend=backend,
        )


def _polygon_options(req: SegmentRequest | EverythingRequest) -> codecs.PolygonOptions:
    return codecs.PolygonOptions(req.polygon_tolerance, req.min_area, req.largest_only)


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


__all__ = [
    "BoundedExecutor",
    "EmbedForwarder",
    "Encoder",
    "LocalEncoder",
    "SegmentationService",
    "ServiceError",
    "validate_prompts",
]
