"""The transport-independent client: retries on overload, transparent re-embed, argument
handling; HTTP and gRPC subclasses supply the raw calls (sync and async variants)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Sequence, TypeVar

from edgesam_client._common import (
    ImageLike,
    ImageMemory,
    RetryPolicy,
    image_bytes,
    image_id_of,
    is_image_id,
    prompt_fields,
)
from edgesam_client.errors import EdgeSamError, EmbeddingNotFound
from edgesam_client.results import EmbedResult, EverythingResult, SegmentResult

T = TypeVar("T")
Outputs = Sequence[str]


def segment_fields(
    image_id: str,
    points: Any,
    labels: Any,
    box: Any,
    boxes: Any,
    num_masks: int,
    mask_input_id: str | None,
    outputs: Outputs,
    use_priors: bool = True,
) -> dict[str, Any]:
    """The request as the HTTP API spells it (the gRPC transport translates it)."""
    fields: dict[str, Any] = {"image_id": image_id, "num_masks": num_masks}
    fields.update(prompt_fields(points, labels, box, boxes))
    if mask_input_id:
        fields["mask_input_id"] = mask_input_id
    if not use_priors:
        fields["use_priors"] = False
    fields["output"] = list(outputs)
    return fields


def everything_fields(image_id: str, outputs: Outputs, params: dict[str, Any]) -> dict[str, Any]:
    return {"image_id": image_id, **params, "output": list(outputs)}


class SyncClient:
    """embed / segment / everything / sessions, blocking. Use as a context manager."""

    def __init__(self, retry: RetryPolicy | None = None, memory: ImageMemory | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.memory = memory or ImageMemory()

    # -- raw calls, per transport ----------------------------------------------------------
    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        raise NotImplementedError

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        raise NotImplementedError

    def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        raise NotImplementedError

    def _has_raw(self, image_id: str) -> bool:
        raise NotImplementedError

    def _delete_raw(self, image_id: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- policy ----------------------------------------------------------------------------
    def _retrying(self, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except EdgeSamError as exc:
                if not self.retry.should_retry(exc, attempt):
                    raise
                time.sleep(self.retry.delay(attempt, exc.retry_after))
                attempt += 1

    def _healing(self, image_id: str, call: Callable[[], T]) -> T:
        """Run `call`; on embedding_not_found, embed the remembered bytes again, once."""
        try:
            return self._retrying(call)
        except EmbeddingNotFound:
            remembered = self.memory.get(image_id)
            if remembered is None:
                raise
            self._retrying(lambda: self._embed_raw(*remembered))
            return self._retrying(call)

    # -- operations ------------------------------------------------------------------------
    def embed(self, image: ImageLike) -> EmbedResult:
        """Upload an image (path, bytes, uint8 RGB array or PIL image) once."""
        data, content_type = image_bytes(image)
        result = self._retrying(lambda: self._embed_raw(data, content_type))
        self.memory.put(result.image_id, data, content_type)
        return result

    def image_id(self, image: ImageLike | str) -> str:
        """`image` itself when it is an image_id, else the id of the image, embedded."""
        if is_image_id(image):
            return str(image).lower()
        data, content_type = image_bytes(image)
        image_id = image_id_of(data)
        if self.memory.get(image_id) is not None:
            return image_id  # embedded by this client; an expiry is healed on use
        if not self._retrying(lambda: self._has_raw(image_id)):
            self._retrying(lambda: self._embed_raw(data, content_type))
        self.memory.put(image_id, data, content_type)
        return image_id

    def segment(
        self,
        image: ImageLike | str,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        boxes: Any = None,
        num_masks: int = 1,
        mask_input_id: str | None = None,
        outputs: Outputs = ("rle",),
        use_priors: bool = True,
    ) -> SegmentResult:
        """Masks for points ([[x, y], ...], labels default to 1) and/or a box [x0, y0, x1,
        y1] or boxes. `image` is an image_id or an image (embedded first when needed).
        `use_priors=False` turns off a server's granularity priors for this request."""
        image_id = self.image_id(image)
        fields = segment_fields(
            image_id, points, labels, box, boxes, num_masks, mask_input_id, outputs, use_priors
        )
        return self._healing(image_id, lambda: self._segment_raw(fields))

    def everything(
        self, image: ImageLike | str, outputs: Outputs = ("rle",), **params: Any
    ) -> EverythingResult:
        """Every object (points_per_side=..., pred_iou_thresh=..., max_masks=..., ...)."""
        image_id = self.image_id(image)
        fields = everything_fields(image_id, outputs, params)
        return self._healing(image_id, lambda: self._everything_raw(fields))

    def has_embedding(self, image_id: str) -> bool:
        return self._retrying(lambda: self._has_raw(image_id))

    def delete_embedding(self, image_id: str) -> bool:
        return self._retrying(lambda: self._delete_raw(image_id))

    def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> Session:
        """An interactive session on one image: click(), box(), undo(), reset()."""
        return EmulatedSession(self, self.image_id(image), num_masks, outputs)


class Session:
    """Clicks and boxes on one image; each call answers the masks for every prompt so far.
    Use as a context manager (or call close())."""

    image_id: str

    def click(self, x: float, y: float, positive: bool = True) -> SegmentResult:
        return self._act("click", (float(x), float(y), 1 if positive else 0))

    def box(self, x0: float, y0: float, x1: float, y1: float) -> SegmentResult:
        return self._act("box", (float(x0), float(y0), float(x1), float(y1)))

    def undo(self) -> SegmentResult:
        return self._act("undo", None)

    def reset(self) -> SegmentResult:
        return self._act("reset", None)

    def _act(self, action: str, value: Any) -> SegmentResult:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _History:
    """Prompt state of an emulated session: (points, labels, box, answer) per step."""

    def __init__(self, image_id: str) -> None:
        self.image_id = image_id
        self.steps: list[tuple[list, list, list | None, SegmentResult]] = []

    def next_prompts(self, action: str, value: Any) -> tuple[list, list, list | None]:
        points, labels, box = self.steps[-1][:3] if self.steps else ([], [], None)
        if action == "click":
            return [*points, [value[0], value[1]]], [*labels, value[2]], box
        return list(points), list(labels), list(value)

    def back(self, action: str, width: int, height: int) -> SegmentResult:
        if action == "undo" and self.steps:
            self.steps.pop()
        else:
            self.steps.clear()
        if self.steps:
            return self.steps[-1][3]
        return SegmentResult(self.image_id, width, height, [])


class EmulatedSession(Session):
    """A session over unary segment calls (HTTP): prompts accumulate client-side and each
    answer's mask_input_id refines the next one."""

    def __init__(self, client: SyncClient, image_id: str, num_masks: int, outputs: Outputs) -> None:
        self.client = client
        self.image_id = image_id
        self.num_masks = num_masks
        self.outputs = outputs
        self.history = _History(image_id)
        self.size = (0, 0)

    def _act(self, action: str, value: Any) -> SegmentResult:
        if action in ("undo", "reset"):
            return self.history.back(action, *self.size)
        points, labels, box = self.history.next_prompts(action, value)
        previous = self.history.steps[-1][3].mask_input_id if self.history.steps else None
        result = self.client.segment(
            self.image_id,
            points=points or None,
            labels=labels or None,
            box=box,
            num_masks=self.num_masks,
            mask_input_id=previous,
            outputs=self.outputs,
        )
        self.size = (result.width, result.height)
        self.history.steps.append((points, labels, box, result))
        return result


class AsyncClient:
    """The same operations as SyncClient, awaitable."""

    def __init__(self, retry: RetryPolicy | None = None, memory: ImageMemory | None = None) -> None:
        self.retry = retry or RetryPolicy()
        self.memory = memory or ImageMemory()

    async def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        raise NotImplementedError

    async def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        raise NotImplementedError

    async def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        raise NotImplementedError

    async def _has_raw(self, image_id: str) -> bool:
        raise NotImplementedError

    async def _delete_raw(self, image_id: str) -> bool:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await call()
            except EdgeSamError as exc:
                if not self.retry.should_retry(exc, attempt):
                    raise
                await asyncio.sleep(self.retry.delay(attempt, exc.retry_after))
                attempt += 1

    async def _healing(self, image_id: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._retrying(call)
        except EmbeddingNotFound:
            remembered = self.memory.get(image_id)
            if remembered is None:
                raise
            await self._retrying(lambda: self._embed_raw(*remembered))
            return await self._retrying(call)

    async def embed(self, image: ImageLike) -> EmbedResult:
        data, content_type = image_bytes(image)
        result = await self._retrying(lambda: self._embed_raw(data, content_type))
        self.memory.put(result.image_id, data, content_type)
        return result

    async def image_id(self, image: ImageLike | str) -> str:
        if is_image_id(image):
            return str(image).lower()
        data, content_type = image_bytes(image)
        image_id = image_id_of(data)
        if self.memory.get(image_id) is not None:
            return image_id
        if not await self._retrying(lambda: self._has_raw(image_id)):
            await self._retrying(lambda: self._embed_raw(data, content_type))
        self.memory.put(image_id, data, content_type)
        return image_id

    async def segment(
        self,
        image: ImageLike | str,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        boxes: Any = None,
        num_masks: int = 1,
        mask_input_id: str | None = None,
        outputs: Outputs = ("rle",),
        use_priors: bool = True,
    ) -> SegmentResult:
        image_id = await self.image_id(image)
        fields = segment_fields(
            image_id, points, labels, box, boxes, num_masks, mask_input_id, outputs, use_priors
        )
        return await self._healing(image_id, lambda: self._segment_raw(fields))

    async def everything(
        self, image: ImageLike | str, outputs: Outputs = ("rle",), **params: Any
    ) -> EverythingResult:
        image_id = await self.image_id(image)
        fields = everything_fields(image_id, outputs, params)
        return await self._healing(image_id, lambda: self._everything_raw(fields))

    async def has_embedding(self, image_id: str) -> bool:
        return await self._retrying(lambda: self._has_raw(image_id))

    async def delete_embedding(self, image_id: str) -> bool:
        return await self._retrying(lambda: self._delete_raw(image_id))

    async def session(
        self, image: ImageLike | str, num_masks: int = 1, outputs: Outputs = ("rle",)
    ) -> AsyncSession:
        return AsyncEmulatedSession(self, await self.image_id(image), num_masks, outputs)


class AsyncSession:
    image_id: str

    async def click(self, x: float, y: float, positive: bool = True) -> SegmentResult:
        return await self._act("click", (float(x), float(y), 1 if positive else 0))

    async def box(self, x0: float, y0: float, x1: float, y1: float) -> SegmentResult:
        return await self._act("box", (float(x0), float(y0), float(x1), float(y1)))

    async def undo(self) -> SegmentResult:
        return await self._act("undo", None)

    async def reset(self) -> SegmentResult:
        return await self._act("reset", None)

    async def _act(self, action: str, value: Any) -> SegmentResult:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncEmulatedSession(AsyncSession):
    def __init__(
        self, client: AsyncClient, image_id: str, num_masks: int, outputs: Outputs
    ) -> None:
        self.client = client
        self.image_id = image_id
        self.num_masks = num_masks
        self.outputs = outputs
        self.history = _History(image_id)
        self.size = (0, 0)

    async def _act(self, action: str, value: Any) -> SegmentResult:
        if action in ("undo", "reset"):
            return self.history.back(action, *self.size)
        points, labels, box = self.history.next_prompts(action, value)
        previous = self.history.steps[-1][3].mask_input_id if self.history.steps else None
        result = await self.client.segment(
            self.image_id,
            points=points or None,
            labels=labels or None,
            box=box,
            num_masks=self.num_masks,
            mask_input_id=previous,
            outputs=self.outputs,
        )
        self.size = (result.width, result.height)
        self.history.steps.append((points, labels, box, result))
        return result
