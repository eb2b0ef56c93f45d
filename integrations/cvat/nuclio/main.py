"""CVAT nuclio functions answered by an EdgeSAM service: an interactor, and the embedding
CVAT's Segment Anything browser plugin decodes itself. One source, two function configs:

    function-interactor.yaml  handler main:handler        (kind interactor, EdgeSAM)
    function-sam.yaml         handler main:sam_embedding  (replaces pth-facebookresearch-sam-vit-h)

Interactor: CVAT's contract (cvat-ai/cvat): the lambda manager (cvat/apps/lambda_manager/views.py,
LambdaFunction.invoke) posts {"image": base64 frame, "pos_points": [[x, y], ...],
"neg_points": [[x, y], ...], "obj_bbox": [[x0, y0], [x1, y1]] or absent, "threshold"?} and
passes the answer to the UI unchanged; the UI (cvat-ui/src/components/annotation-page/
standard-workspace/controls-side-bar/tools-control.tsx, runInteractionRequest) reads
{"mask": rows of 0/255, "points": [[x, y], ...] (optional), "bounds": [xtl, ytl, xbr, ybr]
(optional: the mask covers these inclusive pixel bounds, else the whole frame)}.

This function holds no model: it hashes the frame (the EdgeSAM image_id is the sha256 of the
bytes), asks the service for masks on that image_id, and uploads the frame only when the
service answers embedding_not_found. CVAT re-sends the whole frame on every click; every
click after the first is a single small /v1/segment call and never re-encodes the image.

SAM plugin: CVAT's function (serverless/pytorch/facebookresearch/sam/nuclio/main.py) answers
{"image": base64 frame} with {"blob": base64 of the float32 1x256x64x64 image embedding's
bytes}; the browser plugin (cvat-ui/plugins/sam/src/ts/index.tsx) reads the blob as a
Float32Array of shape [1, 256, 64, 64] for the function named pth-facebookresearch-sam-vit-h and
runs /assets/decoder.onnx on it. sam_embedding answers the same from the service's cached
embedding (GET /v1/embeddings/{image_id}, an .npy), uploading the frame only when it is not
cached; the decoder must then be EdgeSAM's in CVAT's signature (docs/integrations.md).

Environment: EDGESAM_URL (default http://edgesam:8000), EDGESAM_API_KEY (optional),
EDGESAM_TIMEOUT_S (default 30). Needs numpy and Pillow only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image


class EdgeSamError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class EdgeSam:
    """The few EdgeSAM HTTP calls a CVAT function makes (stdlib HTTP, bounded by a timeout)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as res:  # noqa: S310 - configured URL
                return res.status, res.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise EdgeSamError(
                502, "edgesam_unreachable", f"EdgeSAM service unreachable: {exc}"
            ) from exc

    def call_json(self, method: str, path: str, payload: Any = None) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        status, raw = self.request(method, path, body, "application/json" if body else None)
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {"code": "bad_answer", "message": f"HTTP {status}"}

    def embed(self, image: bytes) -> str:
        status, raw = self.request("POST", "/v1/embed", image, media_type(image))
        answer = json.loads(raw or b"{}") if raw else {}
        if status != 200:
            raise EdgeSamError(
                status, answer.get("code", "embed_failed"), answer.get("message", "embed failed")
            )
        return str(answer["image_id"])

    def segment(self, image: bytes, request: dict) -> dict:
        """/v1/segment on the image's id; on embedding_not_found, upload it once and retry.
        `image`: JPEG, PNG or WebP bytes (prepare_image)."""
        image_id = hashlib.sha256(image).hexdigest()
        status, answer = self.call_json("POST", "/v1/segment", {"image_id": image_id, **request})
        if status == 404 and answer.get("code") == "embedding_not_found":
            self.embed(image)
            status, answer = self.call_json(
                "POST", "/v1/segment", {"image_id": image_id, **request}
            )
        if status != 200:
            raise EdgeSamError(
                status, answer.get("code", "segment_failed"), answer.get("message", "")
            )
        return answer


def media_type(image: bytes) -> str:
    if image[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if image[:4] == b"RIFF" and image[8:12] == b"WEBP":
        return "image/webp"
    return ""


def prepare_image(image: bytes) -> bytes:
    """JPEG, PNG and WebP frames as they are (their sha256 is the EdgeSAM image_id); any other
    format (BMP, TIFF) re-encoded as PNG, the same bytes for the same frame every time."""
    if media_type(image):
        return image
    try:
        out = io.BytesIO()
        Image.open(io.BytesIO(image)).convert("RGB").save(out, format="PNG")
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad image
        raise EdgeSamError(400, "invalid_image", "the frame is not a readable image") from exc
    return out.getvalue()


def request_from_cvat(data: dict) -> dict:
    """CVAT's interactor payload -> the EdgeSAM segment fields (points in frame pixels)."""
    pos = [[float(x), float(y)] for x, y in data.get("pos_points") or []]
    neg = [[float(x), float(y)] for x, y in data.get("neg_points") or []]
    request: dict = {"output": ["png", "polygons"], "largest_only": True}
    if pos or neg:
        request["points"] = pos + neg
        request["labels"] = [1] * len(pos) + [0] * len(neg)
    bbox = data.get("obj_bbox")
    if bbox:
        (x0, y0), (x1, y1) = bbox[0], bbox[1]
        request["box"] = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    if "points" not in request and "box" not in request:
        raise EdgeSamError(400, "invalid_prompt", "give at least one point or a box")
    return request


def answer_for_cvat(mask_item: dict) -> dict:
    """An EdgeSAM mask -> CVAT's interactor answer: the mask cropped to its bounds (0/255 rows),
    the bounds [xtl, ytl, xbr, ybr] (inclusive) and the polygon of its largest part."""
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask_item["png"])))) > 0
    x, y, w, h = mask_item["bbox"]
    polygons = mask_item.get("polygons") or []
    points = (
        [[polygons[0][i], polygons[0][i + 1]] for i in range(0, len(polygons[0]), 2)]
        if polygons
        else []
    )
    if w == 0 or h == 0:
        return {"mask": [[0]], "bounds": [0, 0, 0, 0], "points": []}
    crop = mask[y : y + h, x : x + w].astype(np.uint8) * 255
    return {"mask": crop.tolist(), "bounds": [x, y, x + w - 1, y + h - 1], "points": points}


def embedding_blob(edgesam: EdgeSam, image: bytes) -> str:
    """base64 of the image's embedding as little-endian float32 1x256x64x64 C-order bytes,
    what CVAT's SAM function returns (features.numpy() bytes)."""
    image_id = hashlib.sha256(image).hexdigest()
    status, raw = edgesam.request("GET", f"/v1/embeddings/{image_id}")
    if status == 404:
        edgesam.embed(image)
        status, raw = edgesam.request("GET", f"/v1/embeddings/{image_id}")
    if status == 405:
        raise EdgeSamError(
            501, "unavailable_feature", "the EdgeSAM service does not serve GET /v1/embeddings/{id}"
        )
    if status != 200:
        raise EdgeSamError(status, "embedding_failed", f"GET /v1/embeddings answered HTTP {status}")
    array = np.load(io.BytesIO(raw), allow_pickle=False)
    if array.size != 256 * 64 * 64:
        raise EdgeSamError(502, "bad_embedding", f"the embedding has shape {array.shape}")
    blob = np.ascontiguousarray(array.reshape(1, 256, 64, 64), dtype="<f4").tobytes()
    return base64.b64encode(blob).decode()


def body_of(event: Any) -> dict:
    body = event.body
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict):
        raise EdgeSamError(400, "invalid_request", "the body must be a JSON object")
    return body


def init_context(context: Any) -> None:
    context.logger.info("Init context...  0%")
    context.user_data.edgesam = EdgeSam(
        os.environ.get("EDGESAM_URL", "http://edgesam:8000"),
        os.environ.get("EDGESAM_API_KEY") or None,
        float(os.environ.get("EDGESAM_TIMEOUT_S", "30")),
    )
    context.logger.info("Init context...100%")


def handler(context: Any, event: Any) -> Any:
    try:
        data = body_of(event)
        if not isinstance(data.get("image"), str):
            raise EdgeSamError(400, "invalid_request", "image (base64) is required")
        image = prepare_image(base64.b64decode(data["image"]))
        answer = context.user_data.edgesam.segment(image, request_from_cvat(data))
        result = answer_for_cvat(answer["masks"][0])
        return context.Response(
            body=json.dumps(result), headers={}, content_type="application/json", status_code=200
        )
    except EdgeSamError as exc:
        context.logger.warn(f"edgesam: {exc.code}: {exc.message}")
        return context.Response(
            body=json.dumps({"code": exc.code, "message": exc.message}),
            headers={},
            content_type="application/json",
            status_code=exc.status if 400 <= exc.status < 600 else 500,
        )
    except (ValueError, KeyError, TypeError) as exc:
        return context.Response(
            body=json.dumps({"code": "invalid_request", "message": f"bad request: {exc}"}),
            headers={},
            content_type="application/json",
            status_code=400,
        )


def sam_embedding(context: Any, event: Any) -> Any:
    """CVAT's SAM function contract: {"image": base64} -> {"blob": base64 float32 embedding}."""
    try:
        data = body_of(event)
        if not isinstance(data.get("image"), str):
            raise EdgeSamError(400, "invalid_request", "image (base64) is required")
        image = prepare_image(base64.b64decode(data["image"]))
        blob = embedding_blob(context.user_data.edgesam, image)
        return context.Response(
            body=json.dumps({"blob": blob}),
            headers={},
            content_type="application/json",
            status_code=200,
        )
    except EdgeSamError as exc:
        context.logger.warn(f"edgesam: {exc.code}: {exc.message}")
        return context.Response(
            body=json.dumps({"code": exc.code, "message": exc.message}),
            headers={},
            content_type="application/json",
            status_code=exc.status if 400 <= exc.status < 600 else 500,
        )
