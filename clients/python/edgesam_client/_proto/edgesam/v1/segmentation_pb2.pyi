from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_RLE: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PNG: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_POLYGONS: _ClassVar[OutputFormat]
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_RLE: OutputFormat
OUTPUT_FORMAT_PNG: OutputFormat
OUTPUT_FORMAT_POLYGONS: OutputFormat

class EmbedRequest(_message.Message):
    __slots__ = ("image", "content_type", "url")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    content_type: str
    url: str
    def __init__(self, image: _Optional[bytes] = ..., content_type: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("image_id", "width", "height", "cached", "expires_in", "model_fingerprint")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    cached: bool
    expires_in: int
    model_fingerprint: str
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., cached: bool = ..., expires_in: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class EmbedBatchRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[EmbedRequest]
    def __init__(self, images: _Optional[_Iterable[_Union[EmbedRequest, _Mapping]]] = ...) -> None: ...

class EmbedError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EmbedBatchItem(_message.Message):
    __slots__ = ("result", "error")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    result: EmbedResponse
    error: EmbedError
    def __init__(self, result: _Optional[_Union[EmbedResponse, _Mapping]] = ..., error: _Optional[_Union[EmbedError, _Mapping]] = ...) -> None: ...

class EmbedBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[EmbedBatchItem]
    def __init__(self, results: _Optional[_Iterable[_Union[EmbedBatchItem, _Mapping]]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("image_id", "points", "labels", "box", "boxes", "num_masks", "mask_input_id", "outputs", "use_priors", "polygon_tolerance", "min_area", "largest_only", "prompts")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    NUM_MASKS_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    USE_PRIORS_FIELD_NUMBER: _ClassVar[int]
    POLYGON_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    LARGEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    points: _containers.RepeatedCompositeFieldContainer[Point]
    labels: _containers.RepeatedScalarFieldContainer[int]
    box: Box
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    num_masks: int
    mask_input_id: str
    outputs: _containers.RepeatedScalarFieldContainer[OutputFormat]
    use_priors: bool
    polygon_tolerance: float
    min_area: int
    largest_only: bool
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    def __init__(self, image_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., num_masks: _Optional[int] = ..., mask_input_id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., use_priors: bool = ..., polygon_tolerance: _Optional[float] = ..., min_area: _Optional[int] = ..., largest_only: bool = ..., prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("points", "labels", "box", "mask_input_id")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    labels: _containers.RepeatedScalarFieldContainer[int]
    box: Box
    mask_input_id: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., mask_input_id: _Optional[str] = ...) -> None: ...

class Rle(_message.Message):
    __slots__ = ("size", "counts")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    counts: str
    def __init__(self, size: _Optional[_Iterable[int]] = ..., counts: _Optional[str] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("xy", "holes")
    XY_FIELD_NUMBER: _ClassVar[int]
    HOLES_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    holes: _containers.RepeatedCompositeFieldContainer[Ring]
    def __init__(self, xy: _Optional[_Iterable[float]] = ..., holes: _Optional[_Iterable[_Union[Ring, _Mapping]]] = ...) -> None: ...

class Ring(_message.Message):
    __slots__ = ("xy",)
    XY_FIELD_NUMBER: _ClassVar[int]
    xy: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, xy: _Optional[_Iterable[float]] = ...) -> None: ...

class BBox(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("prompt_index", "mask_index", "score", "stability_score", "bbox", "area", "rle", "png", "polygons")
    PROMPT_INDEX_FIELD_NUMBER: _ClassVar[int]
    MASK_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    prompt_index: int
    mask_index: int
    score: float
    stability_score: float
    bbox: BBox
    area: int
    rle: Rle
    png: bytes
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, prompt_index: _Optional[int] = ..., mask_index: _Optional[int] = ..., score: _Optional[float] = ..., stability_score: _Optional[float] = ..., bbox: _Optional[_Union[BBox, _Mapping]] = ..., area: _Optional[int] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ..., png: _Optional[bytes] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("image_id", "width", "height", "masks", "mask_input_id", "mask_input_ids")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_INPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    masks: _containers.RepeatedCompositeFieldContainer[Mask]
    mask_input_id: str
    mask_input_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., masks: _Optional[_Iterable[_Union[Mask, _Mapping]]] = ..., mask_input_id: _Optional[str] = ..., mask_input_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class EverythingRequest(_message.Message):
    __slots__ = ("image_id", "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset", "box_nms_thresh", "min_mask_region_area", "max_masks", "outputs", "polygon_tolerance", "min_area", "largest_only")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_PER_SIDE_FIELD_NUMBER: _ClassVar[int]
    POINTS_PER_BATCH_FIELD_NUMBER: _ClassVar[int]
    PRED_IOU_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_THRESH_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BOX_NMS_THRESH_FIELD_NUMBER: _ClassVar[int]
    MIN_MASK_REGION_AREA_FIELD_NUMBER: _ClassVar[int]
    MAX_MASKS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    POLYGON_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    LARGEST_ONLY_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    min_mask_region_area: int
    max_masks: int
    outputs: _containers.RepeatedScalarFieldContainer[OutputFormat]
    polygon_tolerance: float
    min_area: int
    largest_only: bool
    def __init__(self, image_id: _Optional[str] = ..., points_per_side: _Optional[int] = ..., points_per_batch: _Optional[int] = ..., pred_iou_thresh: _Optional[float] = ..., stability_score_thresh: _Optional[float] = ..., stability_score_offset: _Optional[float] = ..., box_nms_thresh: _Optional[float] = ..., min_mask_region_area: _Optional[int] = ..., max_masks: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., polygon_tolerance: _Optional[float] = ..., min_area: _Optional[int] = ..., largest_only: bool = ...) -> None: ...

class EverythingMask(_message.Message):
    __slots__ = ("score", "stability_score", "bbox", "area", "point", "rle", "png", "polygons")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STABILITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    score: float
    stability_score: float
    bbox: BBox
    area: int
    point: Point
    rle: Rle
    png: bytes
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, score: _Optional[float] = ..., stability_score: _Optional[float] = ..., bbox: _Optional[_Union[BBox, _Mapping]] = ..., area: _Optional[int] = ..., point: _Optional[_Union[Point, _Mapping]] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ..., png: _Optional[bytes] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class EverythingResponse(_message.Message):
    __slots__ = ("image_id", "width", "height", "masks")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    masks: _containers.RepeatedCompositeFieldContainer[EverythingMask]
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., masks: _Optional[_Iterable[_Union[EverythingMask, _Mapping]]] = ...) -> None: ...

class EmbeddingRef(_message.Message):
    __slots__ = ("image_id",)
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    def __init__(self, image_id: _Optional[str] = ...) -> None: ...

class EmbeddingStatus(_message.Message):
    __slots__ = ("image_id", "exists")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    exists: bool
    def __init__(self, image_id: _Optional[str] = ..., exists: bool = ...) -> None: ...

class EmbeddingData(_message.Message):
    __slots__ = ("image_id", "data", "shape", "dtype", "width", "height", "fingerprint")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    width: int
    height: int
    fingerprint: str
    def __init__(self, image_id: _Optional[str] = ..., data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class SessionStart(_message.Message):
    __slots__ = ("image", "image_id", "content_type", "num_masks", "outputs")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_MASKS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    image_id: str
    content_type: str
    num_masks: int
    outputs: _containers.RepeatedScalarFieldContainer[OutputFormat]
    def __init__(self, image: _Optional[bytes] = ..., image_id: _Optional[str] = ..., content_type: _Optional[str] = ..., num_masks: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[OutputFormat, str]]] = ...) -> None: ...

class Click(_message.Message):
    __slots__ = ("x", "y", "label")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    label: int
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., label: _Optional[int] = ...) -> None: ...

class Undo(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Reset(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InteractiveRequest(_message.Message):
    __slots__ = ("start", "click", "box", "undo", "reset")
    START_FIELD_NUMBER: _ClassVar[int]
    CLICK_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    UNDO_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    start: SessionStart
    click: Click
    box: Box
    undo: Undo
    reset: Reset
    def __init__(self, start: _Optional[_Union[SessionStart, _Mapping]] = ..., click: _Optional[_Union[Click, _Mapping]] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., undo: _Optional[_Union[Undo, _Mapping]] = ..., reset: _Optional[_Union[Reset, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("image_id", "width", "height", "cached")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    image_id: str
    width: int
    height: int
    cached: bool
    def __init__(self, image_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., cached: bool = ...) -> None: ...

class SessionError(_message.Message):
    __slots__ = ("code", "message", "retry_after")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    retry_after: float
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., retry_after: _Optional[float] = ...) -> None: ...

class InteractiveResponse(_message.Message):
    __slots__ = ("seq", "started", "masks", "error", "num_points", "has_box")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    MASKS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NUM_POINTS_FIELD_NUMBER: _ClassVar[int]
    HAS_BOX_FIELD_NUMBER: _ClassVar[int]
    seq: int
    started: SessionStarted
    masks: SegmentResponse
    error: SessionError
    num_points: int
    has_box: bool
    def __init__(self, seq: _Optional[int] = ..., started: _Optional[_Union[SessionStarted, _Mapping]] = ..., masks: _Optional[_Union[SegmentResponse, _Mapping]] = ..., error: _Optional[_Union[SessionError, _Mapping]] = ..., num_points: _Optional[int] = ..., has_box: bool = ...) -> None: ...
