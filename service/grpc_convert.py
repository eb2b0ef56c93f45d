"""Messages of edgesam.v1 <-> the core's schema objects. No logic beyond the translation:
validation is the schemas' and the core's, so gRPC rejects exactly what HTTP rejects."""

from __future__ import annotations

import base64
from typing import Any

from pydantic import ValidationError

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from service.errors import InvalidRequest
from service.schemas import (
    EmbedResult,
    EverythingMask,
    EverythingRequest,
    EverythingResult,
    MaskItem,
    SegmentRequest,
    SegmentResult,
)

OUTPUT_NAMES = {
    pb.OUTPUT_FORMAT_RLE: "rle",
    pb.OUTPUT_FORMAT_PNG: "png",
    pb.OUTPUT_FORMAT_POLYGONS: "polygons",
}
EVERYTHING_FIELDS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
    "max_masks",
)


def validation_message(exc: ValidationError) -> str:
    """One sentence naming the first problem (the HTTP transport words it the same way)."""
    errors = exc.errors()
    if not errors:
        return "the request is invalid"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{loc or 'request'}: {first.get('msg', 'invalid')}{more}"


def outputs_from_pb(values: Any) -> list[str]:
    """Repeated OutputFormat -> ["rle", ...]; empty means RLE only."""
    names = []
    for value in values:
        name = OUTPUT_NAMES.get(int(value))
        if name is None:
            raise InvalidRequest(
                f"outputs: unknown output format {int(value)}; use RLE, PNG or POLYGONS"
            )
        names.append(name)
    return names or ["rle"]


def _box(box: pb.Box) -> tuple[float, float, float, float]:
    return (box.x0, box.y0, box.x1, box.y1)


def segment_fields(
    image_id: str,
    points: list[tuple[float, float]] | None,
    labels: list[int] | None,
    box: tuple[float, float, float, float] | None,
    boxes: list[tuple[float, float, float, float]] | None,
    num_masks: int | None,
    mask_input_id: str | None,
    outputs: list[str],
    use_priors: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> SegmentRequest:
    """A SegmentRequest built through the schema (InvalidRequest on a schema violation);
    `extra`: further schema fields as given (polygon options, prompts)."""
    fields: dict[str, Any] = {"image_id": image_id, "output": outputs, **(extra or {})}
    if use_priors is not None:
        fields["use_priors"] = use_priors
    if points is not None:
        fields["points"] = points
    if labels is not None:
        fields["labels"] = labels
    if box is not None:
        fields["box"] = box
    if boxes is not None:
        fields["boxes"] = boxes
    if num_masks is not None:
        fields["num_masks"] = num_masks
    if mask_input_id:
        fields["mask_input_id"] = mask_input_id
    try:
        return SegmentRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from exc


POLYGON_FIELDS = ("polygon_tolerance", "min_area", "largest_only")


def _polygon_fields(msg: Any) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in POLYGON_FIELDS if msg.HasField(name)}


def _prompt_from_pb(msg: pb.Prompt) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if msg.points:
        fields["points"] = [(p.x, p.y) for p in msg.points]
    if msg.labels:
        fields["labels"] = list(msg.labels)
    if msg.HasField("box"):
        fields["box"] = _box(msg.box)
    if msg.mask_input_id:
        fields["mask_input_id"] = msg.mask_input_id
    return fields


def segment_request_from_pb(msg: pb.SegmentRequest) -> SegmentRequest:
    # Repeated fields cannot tell "absent" from "empty": both mean absent here.
    extra = _polygon_fields(msg)
    if msg.prompts:
        extra["prompts"] = [_prompt_from_pb(p) for p in msg.prompts]
    return segment_fields(
        image_id=msg.image_id,
        points=[(p.x, p.y) for p in msg.points] or None,
        labels=list(msg.labels) or None,
        box=_box(msg.box) if msg.HasField("box") else None,
        boxes=[_box(b) for b in msg.boxes] or None,
        num_masks=msg.num_masks if msg.HasField("num_masks") else None,
        mask_input_id=msg.mask_input_id or None,
        outputs=outputs_from_pb(msg.outputs),
        use_priors=msg.use_priors if msg.HasField("use_priors") else None,
        extra=extra,
    )


def everything_request_from_pb(msg: pb.EverythingRequest) -> EverythingRequest:
    fields: dict[str, Any] = {"image_id": msg.image_id, "output": outputs_from_pb(msg.outputs)}
    for name in EVERYTHING_FIELDS + POLYGON_FIELDS:
        if msg.HasField(name):
            fields[name] = getattr(msg, name)
    try:
        return EverythingRequest.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from exc


def embed_result_to_pb(res: EmbedResult, fingerprint: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(
        image_id=res.image_id,
        width=res.width,
        height=res.height,
        cached=res.cached,
        expires_in=res.expires_in,
        model_fingerprint=fingerprint,
    )


def embed_result_from_pb(msg: pb.EmbedResponse) -> EmbedResult:
    return EmbedResult(
        image_id=msg.image_id,
        width=msg.width,
        height=msg.height,
        cached=msg.cached,
        expires_in=msg.expires_in,
    )


def _encodings(item: MaskItem | EverythingMask) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bbox": pb.BBox(x=item.bbox[0], y=item.bbox[1], width=item.bbox[2], height=item.bbox[3]),
        "area": item.area,
        "score": item.score,
        "stability_score": item.stability_score,
    }
    if item.rle is not None:
        out["rle"] = pb.Rle(size=list(item.rle.size), counts=item.rle.counts)
    if item.png is not None:
        out["png"] = base64.b64decode(item.png)
    if item.polygons is not None:
        holes = item.holes or [[] for _ in item.polygons]
        out["polygons"] = [
            pb.Polygon(xy=poly, holes=[pb.Ring(xy=ring) for ring in rings])
            for poly, rings in zip(item.polygons, holes)
        ]
    return out


def segment_result_to_pb(res: SegmentResult) -> pb.SegmentResponse:
    return pb.SegmentResponse(
        image_id=res.image_id,
        width=res.width,
        height=res.height,
        masks=[
            pb.Mask(prompt_index=m.prompt_index, mask_index=m.mask_index, **_encodings(m))
            for m in res.masks
        ],
        mask_input_id=res.mask_input_id or "",
        mask_input_ids=res.mask_input_ids,
    )


def everything_result_to_pb(res: EverythingResult) -> pb.EverythingResponse:
    return pb.EverythingResponse(
        image_id=res.image_id,
        width=res.width,
        height=res.height,
        masks=[
            pb.EverythingMask(point=pb.Point(x=m.point[0], y=m.point[1]), **_encodings(m))
            for m in res.masks
        ],
    )
