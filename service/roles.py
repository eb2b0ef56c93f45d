"""EDGESAM_ROLE: all | encoder | decoder.

- all (default): one replica embeds and segments.
- encoder: embeds (HTTP /v1/embed and gRPC Embed) into the shared cache. It also answers
  segments (it has the whole model and the same cache), so a misrouted request still
  succeeds; route segment traffic to decoders to keep encoder time for encoding.
- decoder: answers segments for any image in the shared Redis; an embed it cannot answer
  from the cache is forwarded, as the image bytes, to the encoder pool over gRPC
  (EDGESAM_ENCODER_GRPC_TARGET, e.g. dns:///edgesam-encoder:50051, round-robin over every
  address the name resolves to), with a deadline and a bounded retry on UNAVAILABLE. The
  encoder stores the embedding in the shared Redis; the decoder checks that it can read it
  (same Redis, key prefix and model), so a misconfigured pair fails loudly, not per click.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from contextvars import ContextVar

import grpc

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from service.config import Settings
from service.core import SegmentationService
from service.errors import EncoderUnavailable, ServiceError
from service.grpc_convert import embed_result_from_pb
from service.grpc_errors import ERROR_CODE_KEY, RETRY_AFTER_KEY, error_from_code, metadata_value
from service.schemas import EmbedResult

log = logging.getLogger(__name__)

# Absolute time.monotonic() deadline of the call being served (set by the gRPC transport);
# a forwarded embed never waits past it.
DEADLINE: ContextVar[float | None] = ContextVar("edgesam_deadline", default=None)

FORWARD_TIMEOUT_S = 30.0  # per forwarded embed, all attempts together
FORWARD_ATTEMPTS = 3  # tries on UNAVAILABLE (another encoder, round robin)
BACKOFF_S = 0.05
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
CHANNEL_MAX_BYTES = 256 * 1024 * 1024


class GrpcEmbedForwarder:
    """core.EmbedForwarder over gRPC to the encoder pool."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        max_message_bytes: int = CHANNEL_MAX_BYTES,
        timeout_s: float = FORWARD_TIMEOUT_S,
        attempts: int = FORWARD_ATTEMPTS,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._max_bytes = max_message_bytes
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.SegmentationStub | None = None
        self.service: SegmentationService | None = None
        self.forwarded = 0

    def bind(self, service: SegmentationService) -> None:
        """The replica whose cache must see the encoder's embeddings."""
        self.service = service

    def _get_stub(self) -> pb_grpc.SegmentationStub:
        if self._stub is None:  # created on the serving loop, at first use
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[
                    ("grpc.service_config", SERVICE_CONFIG),
                    ("grpc.max_send_message_length", self._max_bytes),
                    ("grpc.max_receive_message_length", self._max_bytes),
                    ("grpc.enable_retries", 0),
                ],
            )
            self._stub = pb_grpc.SegmentationStub(self._channel)
        return self._stub

    async def embed(self, data: bytes, content_type: str | None) -> EmbedResult:
        deadline = time.monotonic() + self.timeout_s
        caller = DEADLINE.get()
        if caller is not None:
            deadline = min(deadline, caller)
        request = pb.EmbedRequest(image=data, content_type=content_type or "")
        stub = self._get_stub()
        last: grpc.aio.AioRpcError | None = None
        for attempt in range(self.attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                response = await stub.Embed(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as exc:
                last = exc
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise self._error(exc) from exc
                delay = BACKOFF_S * (2**attempt) * (0.5 + random.random())
                log.warning(
                    "encoder %s unavailable (attempt %d/%d): %s",
                    self.target,
                    attempt + 1,
                    self.attempts,
                    exc.details(),
                )
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                continue
            self.forwarded += 1
            await self._check_visible(response)
            return embed_result_from_pb(response)
        if last is None:
            raise EncoderUnavailable(
                f"the encoder pool ({self.target}) did not answer in time", retry_after=1
            )
        raise self._error(last)

    def _error(self, exc: grpc.aio.AioRpcError) -> ServiceError:
        trailing = exc.trailing_metadata()
        code = metadata_value(trailing, ERROR_CODE_KEY)
        if code is not None:  # the encoder answered: its error, as the same kind
            retry = metadata_value(trailing, RETRY_AFTER_KEY)
            return error_from_code(code, exc.details() or code, float(retry) if retry else None)
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EncoderUnavailable(
                f"the encoder pool ({self.target}) did not answer in time", retry_after=1
            )
        return EncoderUnavailable(
            f"the encoder pool ({self.target}) is unreachable: "
            f"{exc.code().name} {exc.details() or ''}".strip(),
            retry_after=1,
        )

    async def _check_visible(self, response: pb.EmbedResponse) -> None:
        service = self.service
        if service is None:
            return
        if await service.exists(response.image_id):
            return
        fingerprint = service.backend.fingerprint if service.backend is not None else ""
        why = (
            f"it runs another model ({response.model_fingerprint} here {fingerprint})"
            if response.model_fingerprint and response.model_fingerprint != fingerprint
            else "give both the same EDGESAM_REDIS_URL and EDGESAM_REDIS_KEY_PREFIX"
        )
        log.error("the encoder stored an embedding this decoder cannot read: %s", why)
        raise EncoderUnavailable(
            f"the encoder's embedding is not in this replica's cache: {why}", retry_after=1
        )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def make_forwarder(settings: Settings) -> GrpcEmbedForwarder | None:
    """The decoder role's forwarder (None for the other roles or without a target)."""
    if settings.role != "decoder":
        return None
    if not settings.encoder_grpc_target:
        log.warning(
            "EDGESAM_ROLE=decoder without EDGESAM_ENCODER_GRPC_TARGET: embeds of images not "
            "in the cache answer encoder_unavailable"
        )
        return None
    keys = settings.api_keys
    return GrpcEmbedForwarder(
        settings.encoder_grpc_target,
        api_key=keys[0].get_secret_value() if keys else None,
        max_message_bytes=max(CHANNEL_MAX_BYTES, settings.max_body_bytes + 65536),
        timeout_s=settings.encoder_forward_timeout_s,
        attempts=settings.encoder_forward_attempts,
    )


def apply_role(service: SegmentationService, settings: Settings) -> SegmentationService:
    """Give a decoder-role service its forwarder (unless it has one); returns the service."""
    if service.forwarder is None:
        forwarder = make_forwarder(settings)
        if forwarder is not None:
            forwarder.bind(service)
            service.forwarder = forwarder
    elif isinstance(service.forwarder, GrpcEmbedForwarder) and service.forwarder.service is None:
        service.forwarder.bind(service)
    if settings.role == "decoder" and not settings.redis_url:
        log.warning("EDGESAM_ROLE=decoder without EDGESAM_REDIS_URL: no cache is shared")
    if settings.role == "encoder" and not settings.grpc_port:
        log.warning("EDGESAM_ROLE=encoder with EDGESAM_GRPC_PORT=0: decoders cannot reach it")
    log.info("role: %s", settings.role)
    return service


__all__ = ["DEADLINE", "GrpcEmbedForwarder", "apply_role", "make_forwarder"]
