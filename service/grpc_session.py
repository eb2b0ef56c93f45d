"""One InteractiveSegment stream's state: the image's embedding, the prompts so far and the
previous answer's low-res logits, all held in memory for the life of the stream (no cache
round trip per click). Prompts accumulate: every click adds a point, a box replaces the
box, undo goes back one step, reset forgets everything."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from engine.core import ImageEmbedding
from service.core import SegmentationService
from service.errors import InvalidRequest
from service.grpc_convert import outputs_from_pb, segment_fields, segment_result_to_pb

MAX_HISTORY = 64  # undo depth; older steps are forgotten


@dataclass(frozen=True)
class Step:
    """The prompts in effect after one action, the answer given and its best logits."""

    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]
    box: tuple[float, float, float, float] | None
    answer: pb.SegmentResponse
    logits: torch.Tensor | None


class InteractiveSession:
    def __init__(
        self,
        service: SegmentationService,
        image_id: str,
        embedding: ImageEmbedding,
        num_masks: int | None,
        outputs: list[str],
    ) -> None:
        self.service = service
        self.image_id = image_id
        self.embedding = embedding
        self.num_masks = num_masks
        self.outputs = outputs
        self.history: list[Step] = []

    @classmethod
    async def open(
        cls, service: SegmentationService, start: pb.SessionStart
    ) -> tuple[InteractiveSession, pb.SessionStarted]:
        """Embed (or find) the image and load its embedding once."""
        source = start.WhichOneof("source")
        if source is None:
            raise InvalidRequest("start needs image (bytes) or image_id")
        num_masks = start.num_masks if start.HasField("num_masks") else None
        outputs = outputs_from_pb(start.outputs)
        # validate the answer options up front, with a prompt that is always well formed
        segment_fields("0" * 64, None, None, (0, 0, 1, 1), None, num_masks, None, outputs)
        cached = True
        if source == "image":
            res = await service.embed(start.image, start.content_type or None)
            image_id, cached = res.image_id, res.cached
        else:
            # checked, and lower-cased, by the schema
            checked = segment_fields(
                start.image_id, None, None, (0, 0, 1, 1), None, None, None, ["rle"]
            )
            image_id = checked.image_id
        emb = await service.load_embedding(image_id)
        h, w = emb.original_size
        started = pb.SessionStarted(image_id=image_id, width=w, height=h, cached=cached)
        return cls(service, image_id, emb, num_masks, outputs), started

    @property
    def current(self) -> Step | None:
        return self.history[-1] if self.history else None

    def _empty(self) -> pb.SegmentResponse:
        h, w = self.embedding.original_size
        return pb.SegmentResponse(image_id=self.image_id, width=w, height=h)

    async def apply(self, request: pb.InteractiveRequest) -> pb.SegmentResponse:
        """Apply one action; the answer for the prompts now in effect. A refused action
        (ServiceError) leaves the state unchanged."""
        action = request.WhichOneof("action")
        cur = self.current
        points = cur.points if cur else ()
        labels = cur.labels if cur else ()
        box = cur.box if cur else None
        if action == "click":
            points = (*points, (request.click.x, request.click.y))
            labels = (*labels, request.click.label)
        elif action == "box":
            b = request.box
            box = (b.x0, b.y0, b.x1, b.y1)
        elif action == "undo":
            if self.history:
                self.history.pop()
            return self.current.answer if self.current else self._empty()
        elif action == "reset":
            self.history.clear()
            return self._empty()
        elif action == "start":
            raise InvalidRequest("the session has started already: send start only once")
        else:
            raise InvalidRequest("empty message: send click, box, undo or reset")
        req = segment_fields(
            self.image_id,
            list(points) or None,
            list(labels) or None,
            box,
            None,
            self.num_masks,
            None,
            self.outputs,
        )
        result, best = await self.service.segment_embedding(
            self.embedding, req, cur.logits if cur else None
        )
        answer = segment_result_to_pb(result)
        self.history.append(Step(points, labels, box, answer, best[0] if best else None))
        del self.history[:-MAX_HISTORY]
        return answer
