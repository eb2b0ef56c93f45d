"""Request and response models shared by every transport (no HTTP or gRPC types here).

Structure is checked here (types, lengths, enums, unknown fields); checks that need the image
(coordinates inside it, point counts against the configured limits) live in the core, so the
HTTP and gRPC transports reject exactly the same prompts.

The request models are strict: JSON `true` is not a label or a mask count, and "10" is not a
coordinate (an int is still a float). Hex ids take either case and are kept in lower case, so
the cache finds an image whichever way its sha256 was written.

Too many prompts is invalid_prompt whatever the count: the core refuses more than the
configured max_points / max_boxes, naming the limit; lists beyond the most any server may be
configured to take (POINTS_CAP, BOXES_CAP) are refused here, from their length alone, before
any item is validated (a hostile 1 MiB body of bad items would otherwise cost ~1 s and
~300 MB of validation errors).
"""

# No `from __future__ import annotations`: pydantic evaluates these annotations at run time;
# typing's Optional/List/Tuple keep them valid on Python 3.8 (JetPack 5).
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.compat import Annotated
from service.errors import InvalidPrompt

POINTS_CAP = 4096  # the largest EDGESAM_MAX_POINTS (points, and labels: one per point)
BOXES_CAP = 1024  # the largest EDGESAM_MAX_BOXES
OUTPUTS_CAP = 8  # output formats asked for (three exist; repeats are harmless)

IMAGE_ID_PATTERN = r"^[0-9a-fA-F]{64}$"
MASK_ID_PATTERN = r"^[0-9a-fA-F]{32}$"


def _lower(value: str) -> str:
    return value.lower()


ImageId = Annotated[
    str,
    Field(pattern=IMAGE_ID_PATTERN, description="sha256 of the image bytes (hex, either case)"),
    AfterValidator(_lower),
]
MaskId = Annotated[
    str,
    Field(pattern=MASK_ID_PATTERN, description="id of stored mask logits (hex, either case)"),
    AfterValidator(_lower),
]
IMAGE_ID = TypeAdapter(ImageId)  # the same check (and lower-casing) outside a model
OutputFormat = Literal["rle", "png", "polygons"]
# Strict(False) on the tuples only: JSON arrays arrive as lists (FastAPI validates the parsed
# body as Python objects, where strict tuples would refuse a list); the numbers stay strict.
Point = Annotated[Tuple[float, float], Strict(False)]
Box = Annotated[Tuple[float, float, float, float], Strict(False)]


def _exact_int(expected: str) -> BeforeValidator:
    """Literal ints compare by value even in strict mode (True == 1, 1.0 == 1): refuse any
    input that is not an int (a bool is not)."""

    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": expected}
            )
        return value

    return BeforeValidator(check)


Label = Annotated[Literal[0, 1], _exact_int("0 or 1")]
NumMasks = Annotated[Literal[1, 3, 4], _exact_int("1, 3 or 4")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _StrictRequest(_Strict):
    """A request: no unknown fields and no type coercion (pydantic strict mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class EmbedResult(_Strict):
    image_id: ImageId
    width: int
    height: int
    cached: bool = Field(description="true when the embedding was already in the cache")
    expires_in: int = Field(description="seconds until the cached embedding expires")


def _cap_lists(data: Any, caps: Tuple[Tuple[str, int, str], ...]) -> None:
    """More list items than any server takes: invalid_prompt from the length alone."""
    if isinstance(data, dict):
        for field, cap, setting in caps:
            value = data.get(field)
            if isinstance(value, (list, tuple)) and len(value) > cap:
                raise InvalidPrompt(
                    f"{len(value)} {field}; at most {cap} are accepted "
                    f"(fewer where the server's {setting} is lower)"
                )


class PolygonFields(_StrictRequest):
    """How masks become polygons (output "polygons"); masks, RLE and PNG are unchanged."""

    polygon_tolerance: float = Field(
        0.0,
        ge=0.0,
        le=10_000.0,
        description="Douglas-Peucker tolerance in pixels; 0 keeps every corner of the outline",
    )
    min_area: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="drop polygon parts, and fill holes, of fewer pixels than this",
    )
    largest_only: bool = Field(False, description="only the part with the most pixels")


class ObjectPrompt(_StrictRequest):
    """One object of a many-object request: its own points, box and refinement mask."""

    points: Optional[List[Point]] = Field(None, description="[[x, y], ...] in original pixels")
    labels: Optional[List[Label]] = Field(None, description="one per point: 1 fg, 0 bg")
    box: Optional[Box] = Field(None, description="[x0, y0, x1, y1] in original pixels")
    mask_input_id: Optional[MaskId] = Field(
        None, description="refine this object from a previous answer's mask_input_id"
    )

    @model_validator(mode="before")
    @classmethod
    def _cap_prompt_lists(cls, data: Any) -> Any:
        _cap_lists(
            data, (("points", POINTS_CAP, "max_points"), ("labels", POINTS_CAP, "max_points"))
        )
        return data


class EmbedUrlRequest(_StrictRequest):
    url: str = Field(
        min_length=1,
        max_length=4096,
        description="http(s) URL of the image; fetched only where EDGESAM_URL_ALLOWLIST "
        "lists its host",
    )


class SegmentRequest(PolygonFields):
    image_id: ImageId
    points: Optional[List[Point]] = Field(
        None, description="[[x, y], ...] in original image pixels (at most the server's max_points)"
    )
    labels: Optional[List[Label]] = Field(
        None, description="one per point: 1 foreground, 0 background"
    )
    box: Optional[Box] = Field(None, description="[x0, y0, x1, y1] in original image pixels")
    boxes: Optional[List[Box]] = Field(
        None,
        description="several boxes, one result each, decoded as one batch (at most the "
        "server's max_boxes)",
    )
    mask_input_id: Optional[MaskId] = Field(
        None, description="refine from a previous answer's mask_input_id"
    )
    prompts: Optional[List[ObjectPrompt]] = Field(
        None,
        description="many objects, each with its own points, box and mask_input_id (instead "
        "of the top-level prompt fields); masks carry the object's index as prompt_index "
        "(at most the server's max_boxes objects)",
    )
    num_masks: NumMasks = Field(
        1, description="1: the single-mask token; 3: the three multimask tokens; 4: all four"
    )
    output: List[OutputFormat] = Field(
        default_factory=lambda: ["rle"], min_length=1, max_length=OUTPUTS_CAP
    )
    use_priors: bool = Field(
        True,
        description="where the service runs with granularity priors: add the best proposal "
        "containing the first foreground point as a box to a point-only prompt",
    )

    @model_validator(mode="before")
    @classmethod
    def _cap_prompt_lists(cls, data: Any) -> Any:
        """More prompts than any server takes: invalid_prompt, as the configured limits
        answer in the core, decided from the list's length before its items are validated."""
        _cap_lists(
            data,
            (
                ("points", POINTS_CAP, "max_points"),
                ("labels", POINTS_CAP, "max_points"),
                ("boxes", BOXES_CAP, "max_boxes"),
                ("prompts", BOXES_CAP, "max_boxes"),
            ),
        )
        return data

    @model_validator(mode="after")
    def _prompts_alone(self) -> "SegmentRequest":
        if self.prompts is not None:
            given = [
                name
                for name in ("points", "labels", "box", "boxes", "mask_input_id")
                if getattr(self, name) is not None
            ]
            if given:
                raise InvalidPrompt(
                    f"give prompts or {', '.join(given)}, not both: with prompts, each object "
                    "carries its own points, labels, box and mask_input_id"
                )
        return self


class Rle(_Strict):
    size: Tuple[int, int] = Field(description="[height, width]")
    counts: str = Field(description="COCO compressed RLE (pycocotools)")


class MaskItem(_Strict):
    prompt_index: int = Field(description="which prompt (box) this mask answers")
    mask_index: int = Field(description="mask token index within the prompt's answer")
    score: float = Field(description="predicted IoU")
    stability_score: float
    bbox: Tuple[int, int, int, int] = Field(description="[x, y, width, height] in pixels")
    area: int
    rle: Optional[Rle] = None
    png: Optional[str] = Field(None, description="base64 PNG, 0/255 greyscale")
    polygons: Optional[List[List[float]]] = Field(
        None, description="exterior rings, one per part, each [x0, y0, x1, y1, ...]"
    )
    holes: Optional[List[List[List[float]]]] = Field(
        None, description="for each exterior ring in polygons, its hole rings"
    )


class SegmentResult(_Strict):
    image_id: ImageId
    width: int
    height: int
    masks: List[MaskItem]
    mask_input_id: Optional[MaskId] = Field(
        None, description="the best mask of the first prompt, for the next refinement"
    )
    mask_input_ids: List[MaskId] = Field(
        default_factory=list, description="the best mask of each prompt"
    )


class EverythingRequest(PolygonFields):
    image_id: ImageId
    points_per_side: int = Field(32, ge=1, le=64)
    points_per_batch: int = Field(64, ge=1, le=256)
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    stability_score_offset: float = Field(1.0, gt=0.0, le=10.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    min_mask_region_area: int = Field(0, ge=0, le=10_000_000)
    max_masks: int = Field(256, ge=1, le=4096, description="keep the largest-scoring N")
    output: List[OutputFormat] = Field(
        default_factory=lambda: ["rle"], min_length=1, max_length=OUTPUTS_CAP
    )


class EverythingMask(_Strict):
    score: float
    stability_score: float
    bbox: Tuple[int, int, int, int]
    area: int
    point: Tuple[float, float] = Field(description="the grid point that produced the mask")
    rle: Optional[Rle] = None
    png: Optional[str] = None
    polygons: Optional[List[List[float]]] = None
    holes: Optional[List[List[List[float]]]] = None


class EverythingResult(_Strict):
    image_id: ImageId
    width: int
    height: int
    masks: List[EverythingMask]


class ErrorBody(_Strict):
    code: str = Field(description="stable machine-readable error code")
    message: str = Field(description="a sentence for humans")


class EmbedBatchResult(_Strict):
    results: List[Union[EmbedResult, ErrorBody]] = Field(
        description="one per multipart part, in order: the embed answer or the part's error"
    )


class ComponentStatus(_Strict):
    status: Literal["ok", "degraded", "down", "loading", "disabled"]
    detail: Optional[str] = None


class Readiness(_Strict):
    ready: bool
    status: Literal["ok", "degraded", "loading", "draining", "failed"]
    model: ComponentStatus
    cache: ComponentStatus
    random_weights: bool
    backend: Dict[str, str] = Field(default_factory=dict)


class EmbeddingSpec(_Strict):
    shape: List[int] = Field(description="[1, 256, 64, 64]")
    dtype: Literal["float16", "float32"] = Field(description="as GET /v1/embeddings answers")


class ModelInfo(_Strict):
    id: str = Field(description="the checkpoint's name")
    fingerprint: str = Field(description="hash of the weights; part of every cache key")
    backend: str
    precision: str
    random_weights: bool
    image_size: int = Field(description="the longest side prompts are scaled to (1024)")
    embedding: EmbeddingSpec
    embedding_url: str = Field(description="GET: the cached embedding as .npy")
    decoder_url: str = Field(description="GET: the decoder in segment-anything's ONNX signature")
    decoder_urls: Dict[str, str] = Field(description="every decoder variant (sam, cvat)")


class ModelList(_Strict):
    models: List[ModelInfo]
