"""The gRPC transport (edgesam.v1): GrpcClient and AsyncGrpcClient, with interactive
sessions over the InteractiveSegment stream (the server holds the embedding and the previous
logits, so each click is one message each way)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc

from edgesam_client._base import AsyncClient, AsyncSession, Outputs, Session, SyncClient
from edgesam_client._common import ImageLike, ImageMemory, RetryPolicy, image_bytes, is_image_id
from edgesam_client.errors import EdgeSamError, EmbeddingNotFound, Unavailable, make_error
from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from edgesam_client.results import (
    EmbedResult,
    EverythingResult,
    SegmentResult,
    embed_from_pb,
    everything_from_pb,
    segment_from_pb,
)

DEFAULT_TIMEOUT_S = 60.0
MAX_RECEIVE_BYTES = 256 * 1024 * 1024
OUTPUTS = {
    "rle": pb.OUTPUT_FORMAT_RLE,
    "png": pb.OUTPUT_FORMAT_PNG,
    "polygons": pb.OUTPUT_FORMAT_POLYGONS,
}
EVERYTHING_PARAMS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
    "max_masks",
)
# Statuses that come without the server's code (grpc itself answered).
STATUS_CODES = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "payload_too_large",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
    grpc.StatusCode.DEADLINE_EXCEEDED: "deadline_exceeded",
    grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
    grpc.StatusCode.UNIMPLEMENTED: "not_found",
    grpc.StatusCode.CANCELLED: "cancelled",
}


def channel_target(target: str) -> str:
    """grpc://host:port and grpcs://host:port -> host:port; other targets (dns:///...,
    host:port) as given."""
    for scheme in ("grpc://", "grpcs://"):
        if target.startswith(scheme):
            return target[len(scheme) :]
    return target


def open_channel(target: str, aio: bool = False) -> Any:
    """A channel to `target`: TLS (system roots) for grpcs://, plaintext otherwise."""
    module = grpc.aio if aio else grpc
    if target.startswith("grpcs://"):
        creds = grpc.ssl_channel_credentials()
        return module.secure_channel(channel_target(target), creds, options=channel_options())
    return module.insecure_channel(channel_target(target), options=channel_options())


def channel_options() -> list[tuple[str, Any]]:
    return [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]


def rpc_error(exc: grpc.RpcError) -> EdgeSamError:
    """The client error of a failed call: the server's code from the trailing metadata, or
    one derived from the status when grpc itself answered."""
    code_fn = getattr(exc, "code", None)
    status = code_fn() if code_fn else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(status)
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    code = retry_after = None
    for key, value in trailing or ():
        if key == "edgesam-error-code":
            code = value
        elif key == "retry-after":
            try:
                retry_after = float(value)
            except ValueError:
                retry_after = None
    if code is None:
        code = STATUS_CODES.get(status, status.name.lower())
        if code == "unavailable":
            # grpc says so when no connection could be made: nothing was sent.
            sent = "failed to connect" not in details.lower()
            return Unavailable(code, details, status.name, retry_after, sent=sent)
    return make_error(code, details, status.name, retry_after)


def _outputs(outputs: Outputs) -> list[int]:
    return [OUTPUTS.get(name, pb.OUTPUT_FORMAT_UNSPECIFIED) for name in outputs]


def _box(values: Any) -> pb.Box:
    x0, y0, x1, y1 = (float(v) for v in values)
    return pb.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def segment_message(fields: dict[str, Any]) -> pb.SegmentRequest:
    msg = pb.SegmentRequest(image_id=fields["image_id"], outputs=_outputs(fields["output"]))
    for x, y in fields.get("points") or []:
        msg.points.add(x=x, y=y)
    msg.labels.extend(fields.get("labels") or [])
    if fields.get("box") is not None:
        msg.box.CopyFrom(_box(fields["box"]))
    for box in fields.get("boxes") or []:
        msg.boxes.append(_box(box))
    if fields.get("num_masks") is not None:
        msg.num_masks = int(fields["num_masks"])
    if fields.get("mask_input_id"):
        msg.mask_input_id = fields["mask_input_id"]
    if "use_priors" in fields:
        msg.use_priors = bool(fields["use_priors"])
    return msg


def everything_message(fields: dict[str, Any]) -> pb.EverythingRequest:
    unknown = set(fields) - {"image_id", "output", *EVERYTHING_PARAMS}
    if unknown:
        raise TypeError(f"unknown everything parameter(s): {', '.join(sorted(unknown))}")
    msg = pb.EverythingRequest(image_id=fields["image_id"], outputs=_outputs(fields["output"]))
    for name in EVERYTHING_PARAMS:
        if fields.get(name) is not None:
            setattr(msg, name, fields[name])
    return msg


def action_message(action: str, value: Any) -> pb.InteractiveRequest:
    if action == "click":
        x, y, label = value
        return pb.InteractiveRequest(click=pb.Click(x=x, y=y, label=label))
    if action == "box":
        return pb.InteractiveRequest(box=_box(value))
    if action == "undo":
        return pb.InteractiveRequest(undo=pb.Undo())
    return pb.InteractiveRequest(reset=pb.Reset())


def _answer(response: pb.InteractiveResponse) -> SegmentResult:
    if response.HasField("error"):
        err = response.error
        raise make_error(err.code, err.message, "SESSION", err.retry_after or None)
    return segment_from_pb(response.masks)


def start_message(
    source: bytes | str, content_type: str, num_masks: int, outputs: Outputs
) -> pb.SessionStart:
    start = pb.SessionStart(num_masks=num_masks, outputs=_outputs(outputs))
    if isinstance(source, bytes):
        start.image = source
        start.content_type = content_type
    else:
        start.image_id = source
    return start


class GrpcClient(SyncClient):
    """Blocking client of edgesam.v1 at `target`: grpc://host:50051 (plaintext),
    grpcs://host:443 (TLS), or any gRPC target (host:port, dns:///host:50051)."""

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        super().__init__(retry, memory)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.channel = channel or open_channel(target)
        self.stub = pb_grpc.SegmentationStub(self.channel)

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc

    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        request = pb.EmbedRequest(image=data, content_type=content_type)
        return embed_from_pb(self._unary(self.stub.Embed, request))

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return segment_from_pb(self._unary(self.stub.Segment, segment_message(fields)))

    def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        msg = everything_message(fields)
        return everything_from_pb(self._unary(self.stub.SegmentEverything, msg))

    def _has_raw(self, image_id: str) -> bool:
        return self._unary(self.stub.HasEmbedding, pb.EmbeddingRef(image_id=image_id)).exists

    def _delete_raw(self, image_id: str) -> bool:
        try:
            self._unary(self.stub.DeleteEmbedding, pb.EmbeddingRef(image_id=image_id))
        except EmbeddingNotFound:
            return False
        return True

    def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> GrpcSession:
        """A server-side session (InteractiveSegment stream) on one image."""
        source, content_type = _session_source(self, image)
        try:
            return GrpcSession(self, start_message(source, content_type, num_masks, outputs))
        except EmbeddingNotFound:
            remembered = self.memory.get(str(source)) if isinstance(source, str) else None
            if remembered is None:
                raise
            data, content_type = remembered
            return GrpcSession(self, start_message(data, content_type, num_masks, outputs))

    def close(self) -> None:
        self.channel.close()


def _session_source(client: SyncClient | AsyncClient, image: ImageLike | str) -> tuple[Any, str]:
    """An image_id when the server should have it (the caller gave one, or this client
    embedded the bytes), else the bytes."""
    if is_image_id(image):
        return str(image).lower(), ""
    from edgesam_client._common import image_id_of

    data, content_type = image_bytes(image)
    image_id = image_id_of(data)
    if client.memory.get(image_id) is not None:
        return image_id, ""
    client.memory.put(image_id, data, content_type)
    return data, content_type


def _requests(q: queue.SimpleQueue[pb.InteractiveRequest | None]) -> Iterator[Any]:
    while True:
        item = q.get()
        if item is None:
            return
        yield item


class GrpcSession(Session):
    """One InteractiveSegment stream. Refused clicks raise EdgeSamError and leave the
    session as it was."""

    def __init__(self, client: GrpcClient, start: pb.SessionStart) -> None:
        self._queue: queue.SimpleQueue[pb.InteractiveRequest | None] = queue.SimpleQueue()
        self._queue.put(pb.InteractiveRequest(start=start))
        self._call = client.stub.InteractiveSegment(
            _requests(self._queue), metadata=client.metadata
        )
        self._closed = False
        first = self._next()
        self.image_id = first.started.image_id
        self.width = first.started.width
        self.height = first.started.height

    def _next(self) -> pb.InteractiveResponse:
        try:
            return next(self._call)
        except StopIteration as exc:
            raise EdgeSamError("session_closed", "the server ended the session") from exc
        except grpc.RpcError as exc:
            self._closed = True
            self._queue.put(None)
            raise rpc_error(exc) from exc

    def _act(self, action: str, value: Any) -> SegmentResult:
        if self._closed:
            raise EdgeSamError("session_closed", "the session is closed")
        self._queue.put(action_message(action, value))
        return _answer(self._next())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        try:
            for _ in self._call:
                pass
        except grpc.RpcError:
            pass


class AsyncGrpcClient(AsyncClient):
    """Awaitable client of edgesam.v1 (grpc.aio). Create and use it inside one event loop."""

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
    ) -> None:
        super().__init__(retry, memory)
        self.target = target
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.SegmentationStub | None = None

    @property
    def stub(self) -> pb_grpc.SegmentationStub:
        if self._stub is None:
            self._channel = open_channel(self.target, aio=True)
            self._stub = pb_grpc.SegmentationStub(self._channel)
        return self._stub

    async def _unary(self, name: str, request: Any) -> Any:
        method = getattr(self.stub, name)
        try:
            return await method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise rpc_error(exc) from exc

    async def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        request = pb.EmbedRequest(image=data, content_type=content_type)
        return embed_from_pb(await self._unary("Embed", request))

    async def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return segment_from_pb(await self._unary("Segment", segment_message(fields)))

    async def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        msg = everything_message(fields)
        return everything_from_pb(await self._unary("SegmentEverything", msg))

    async def _has_raw(self, image_id: str) -> bool:
        answer = await self._unary("HasEmbedding", pb.EmbeddingRef(image_id=image_id))
        return bool(answer.exists)

    async def _delete_raw(self, image_id: str) -> bool:
        try:
            await self._unary("DeleteEmbedding", pb.EmbeddingRef(image_id=image_id))
        except EmbeddingNotFound:
            return False
        return True

    async def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> AsyncGrpcSession:
        source, content_type = _session_source(self, image)
        try:
            return await AsyncGrpcSession.open(
                self, start_message(source, content_type, num_masks, outputs)
            )
        except EmbeddingNotFound:
            remembered = self.memory.get(str(source)) if isinstance(source, str) else None
            if remembered is None:
                raise
            data, content_type = remembered
            return await AsyncGrpcSession.open(
                self, start_message(data, content_type, num_masks, outputs)
            )

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


class AsyncGrpcSession(AsyncSession):
    def __init__(self, call: Any) -> None:
        self._call = call
        self._closed = False
        self.image_id = ""
        self.width = self.height = 0

    @classmethod
    async def open(cls, client: AsyncGrpcClient, start: pb.SessionStart) -> AsyncGrpcSession:
        session = cls(client.stub.InteractiveSegment(metadata=client.metadata))
        first = await session._exchange(pb.InteractiveRequest(start=start))
        session.image_id = first.started.image_id
        session.width, session.height = first.started.width, first.started.height
        return session

    async def _exchange(self, request: pb.InteractiveRequest) -> pb.InteractiveResponse:
        if self._closed:
            raise EdgeSamError("session_closed", "the session is closed")
        try:
            await self._call.write(request)
            response = await self._call.read()
        except grpc.RpcError as exc:
            self._closed = True
            raise rpc_error(exc) from exc
        if response is grpc.aio.EOF:
            self._closed = True
            raise EdgeSamError("session_closed", "the server ended the session")
        return response

    async def _act(self, action: str, value: Any) -> SegmentResult:
        return _answer(await self._exchange(action_message(action, value)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._call.done_writing()
            while await self._call.read() is not grpc.aio.EOF:
                pass
        except grpc.RpcError:
            pass
