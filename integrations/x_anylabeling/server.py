"""X-AnyLabeling's "Remote Server" model, answered by an EdgeSAM service.

X-AnyLabeling (CVHub520/X-AnyLabeling, anylabeling/services/auto_labeling/remote_server.py)
talks to a server with this API (documented in CVHub520/X-AnyLabeling-Server, docs/router.md):

    GET  /health                    {"status": "healthy", "models_loaded", "timestamp"}
    GET  /v1/models                 {"success": true, "data": {model_id: {"display_name",
                                     "widgets": [{"name", "value"}], "batch_processing_mode"}}}
    GET  /v1/models/{id}/info       {"success": true, "data": {"model_id", ...}}
    POST /v1/predict                {"model", "image": data URI or base64, "params": {"marks",
                                     "epsilon_factor", "conf_threshold", "iou_threshold"}}
                                 -> {"success": true, "data": {"shapes": [{"label",
                                     "shape_type", "points", "score", ...}], "description"}}
    errors: HTTP 200 with {"success": false, "error": {"code", "message"}}; 503 when full.
    API key: the "Token" header.

This adapter is a separate small process, a thin client of the EdgeSAM HTTP API (it never
imports the service or the model), so it deploys beside an existing EdgeSAM service and needs
only fastapi, httpx and uvicorn (Pillow to accept BMP/TIFF). Each predict hashes the image and
asks the service whether that embedding is cached (HEAD /v1/embeddings/{sha256}): a cached
image is never uploaded or encoded again, however often X-AnyLabeling re-sends it.

    EDGESAM_URL=http://edgesam:8000 python -m integrations.x_anylabeling.server --port 8001
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime
import hashlib
import hmac
import io
import math
import os
from typing import Any, AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL_ID = "edgesam"
# Widgets X-AnyLabeling shows for a remote model (names from its auto-labeling widget's
# update_remote_server_widgets); the slider sets params.epsilon_factor (value 10 -> 0.001,
# the fineness X-AnyLabeling's own EdgeSAM model uses).
WIDGETS = [
    {"name": "button_add_point", "value": None},
    {"name": "button_remove_point", "value": None},
    {"name": "button_add_rect", "value": None},
    {"name": "button_clear", "value": None},
    {"name": "button_finish_object", "value": None},
    {"name": "mask_fineness_slider", "value": 10},
    {"name": "mask_fineness_value_label", "value": None},
]
LABEL = "AUTOLABEL_OBJECT"  # what X-AnyLabeling's SAM models name a new object
TIMEOUT_S = 60.0


class AdapterError(Exception):
    def __init__(self, code: str, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def decode_image(value: str) -> tuple[bytes, str]:
    """A data URI or bare base64 -> (bytes, content type). JPEG, PNG and WebP go as they are;
    other formats (BMP, TIFF) are converted to PNG (the service accepts the first three)."""
    media = ""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        media = header[5:].split(";")[0].strip().lower()
    try:
        data = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise AdapterError("INVALID_IMAGE", "the image is not valid base64") from exc
    if not data:
        raise AdapterError("INVALID_IMAGE", "the image is empty")
    if data[:3] == b"\xff\xd8\xff":
        return data, "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data, "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data, "image/webp"
    try:
        from PIL import Image

        out = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(out, format="PNG")
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad image
        raise AdapterError(
            "INVALID_IMAGE", f"cannot read the image ({media or 'unknown'})"
        ) from exc
    return out.getvalue(), "image/png"


def marks_to_prompts(marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """X-AnyLabeling marks ({"type": "point", "data": [x, y], "label": 1|0} and
    {"type": "rectangle", "data": [x0, y0, x1, y1], "label": 1}) -> EdgeSAM objects.
    One object for the marks (SAM's prompt); with several positive rectangles, one object
    per rectangle, each with the points inside it. Negative rectangles are ignored (SAM has
    no negative box)."""
    points: list[tuple[list[float], int]] = []
    boxes: list[list[float]] = []
    for mark in marks:
        kind, data = mark.get("type"), mark.get("data")
        label = 1 if int(mark.get("label", 1)) == 1 else 0
        if kind == "point" and isinstance(data, list) and len(data) == 2:
            points.append(([float(data[0]), float(data[1])], label))
        elif kind == "rectangle" and isinstance(data, list) and len(data) == 4 and label == 1:
            x0, y0, x1, y1 = (float(v) for v in data)
            boxes.append([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
    if len(boxes) <= 1:
        obj: dict[str, Any] = {}
        if points:
            obj["points"] = [p for p, _ in points]
            obj["labels"] = [label for _, label in points]
        if boxes:
            obj["box"] = boxes[0]
        return [obj] if obj else []
    objects = []
    for box in boxes:
        inside = [
            (p, label)
            for p, label in points
            if box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]
        ]
        obj = {"box": box}
        if inside:
            obj["points"] = [p for p, _ in inside]
            obj["labels"] = [label for _, label in inside]
        objects.append(obj)
    return objects


def _segment_distance(
    p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]
) -> float:
    (px, py), (ax, ay), (bx, by) = p, a, b
    dx, dy = bx - ax, by - ay
    if dx == 0 and dy == 0:
        return math.hypot(px - ax, py - ay)
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def _douglas_peucker(
    points: list[tuple[float, float]], epsilon: float
) -> list[tuple[float, float]]:
    keep = [False] * len(points)
    keep[0] = keep[-1] = True
    stack = [(0, len(points) - 1)]
    while stack:
        first, last = stack.pop()
        best, index = -1.0, -1
        for i in range(first + 1, last):
            d = _segment_distance(points[i], points[first], points[last])
            if d > best:
                best, index = d, i
        if index != -1 and best > epsilon:
            keep[index] = True
            stack += [(first, index), (index, last)]
    return [p for p, k in zip(points, keep) if k]


def simplify_ring(flat: list[float], epsilon_factor: float) -> list[list[float]]:
    """A closed ring [x0, y0, ...] simplified as X-AnyLabeling's own SAM models do:
    cv2.approxPolyDP with epsilon = epsilon_factor * the ring's perimeter."""
    pts = [(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
    if len(pts) < 3:
        return [[x, y] for x, y in pts]
    perimeter = sum(math.dist(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts)))
    epsilon = max(0.0, float(epsilon_factor)) * perimeter
    if epsilon <= 0:
        return [[x, y] for x, y in pts]
    # split the closed ring at its first point and the point farthest from it
    far = max(range(len(pts)), key=lambda i: math.dist(pts[0], pts[i]))
    first = _douglas_peucker(pts[: far + 1], epsilon)
    second = _douglas_peucker(pts[far:] + [pts[0]], epsilon)
    ring = first + second[1:-1]
    return [[x, y] for x, y in ring]


def create_app(
    edgesam_url: str, edgesam_api_key: str | None = None, token: str | None = None
) -> FastAPI:
    """The adapter: `edgesam_url` the EdgeSAM service; `edgesam_api_key` its key (else the
    caller's Token header is passed on as the key); `token` the key X-AnyLabeling must send."""
    http = httpx.AsyncClient(base_url=edgesam_url.rstrip("/"), timeout=TIMEOUT_S)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await http.aclose()

    app = FastAPI(title="EdgeSAM for X-AnyLabeling (remote server)", lifespan=lifespan)

    def fail(exc: AdapterError) -> JSONResponse:
        body = {"success": False, "error": {"code": exc.code, "message": exc.message}}
        if exc.status == 503:
            body = {"detail": exc.message}
        return JSONResponse(body, status_code=exc.status)

    def authorise(request: Request) -> dict[str, str]:
        given = request.headers.get("token", "")
        if token and not hmac.compare_digest(given.encode(), token.encode()):
            raise AdapterError("UNAUTHORIZED", "Invalid or missing API Key")
        key = edgesam_api_key or given
        return {"X-API-Key": key} if key else {}

    def model_info() -> dict[str, Any]:
        return {
            "display_name": "EdgeSAM (remote)",
            "widgets": WIDGETS,
            "batch_processing_mode": "default",
            "params": {"server": edgesam_url},
        }

    async def call(
        method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> httpx.Response:
        try:
            res = await http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise AdapterError(
                "INFERENCE_ERROR", f"EdgeSAM service unreachable: {type(exc).__name__}"
            ) from exc
        if res.status_code == 503:
            raise AdapterError("QUEUE_FULL", "the EdgeSAM service is busy; retry shortly", 503)
        if res.status_code == 401:
            raise AdapterError("UNAUTHORIZED", "the EdgeSAM service refused the API key")
        return res

    async def ensure_embedded(data: bytes, media: str, headers: dict[str, str]) -> str:
        image_id = hashlib.sha256(data).hexdigest()
        res = await call("HEAD", f"/v1/embeddings/{image_id}", headers)
        if res.status_code == 200:
            return image_id
        res = await call("POST", "/v1/embed", {**headers, "Content-Type": media}, content=data)
        if res.status_code != 200:
            raise AdapterError("INVALID_IMAGE", _message(res))
        return str(res.json()["image_id"])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "models_loaded": 1,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            authorise(request)
        except AdapterError as exc:
            return fail(exc)
        return {"success": True, "data": {MODEL_ID: model_info()}}

    @app.get("/v1/models/{model_id}/info")
    async def info(model_id: str, request: Request) -> Any:
        try:
            authorise(request)
            if model_id != MODEL_ID:
                raise AdapterError("MODEL_NOT_FOUND", f"Model '{model_id}' not loaded")
        except AdapterError as exc:
            return fail(exc)
        return {"success": True, "data": {"model_id": MODEL_ID, **model_info()}}

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        try:
            headers = authorise(request)
            try:
                body = await request.json()
            except ValueError as exc:
                raise AdapterError("INVALID_REQUEST", "the body is not JSON") from exc
            if not isinstance(body, dict) or not isinstance(body.get("image"), str):
                raise AdapterError("INVALID_REQUEST", "give model, image and params")
            if body.get("model") != MODEL_ID:
                raise AdapterError("MODEL_NOT_FOUND", f"Model '{body.get('model')}' not loaded")
            params = body.get("params") or {}
            objects = marks_to_prompts(params.get("marks") or [])
            if not objects:  # nothing to segment yet (X-AnyLabeling sends marks per click)
                return {"success": True, "data": {"shapes": [], "description": ""}}
            data, media = decode_image(body["image"])
            image_id = await ensure_embedded(data, media, headers)
            res = await call(
                "POST",
                "/v1/segment",
                headers,
                json={"image_id": image_id, "prompts": objects, "output": ["polygons"]},
            )
            if res.status_code == 404:  # evicted between the two calls: embed once more
                image_id = await ensure_embedded(data, media, headers)
                res = await call(
                    "POST",
                    "/v1/segment",
                    headers,
                    json={"image_id": image_id, "prompts": objects, "output": ["polygons"]},
                )
            if res.status_code != 200:
                raise AdapterError("INFERENCE_ERROR", _message(res))
            epsilon_factor = float(params.get("epsilon_factor", 0.001))
            shapes = []
            for mask in res.json()["masks"]:
                for ring in mask.get("polygons") or []:
                    points = simplify_ring(ring, epsilon_factor)
                    if len(points) < 3:
                        continue
                    shapes.append(
                        {
                            "label": LABEL,
                            "shape_type": "polygon",
                            "points": points,
                            "score": mask["score"],
                            "attributes": {},
                            "description": None,
                            "difficult": False,
                            "direction": 0,
                            "flags": None,
                            "group_id": None,
                            "kie_linking": [],
                        }
                    )
            return {"success": True, "data": {"shapes": shapes, "description": ""}}
        except AdapterError as exc:
            return fail(exc)

    return app


def _message(res: httpx.Response) -> str:
    try:
        body = res.json()
        return f"{body.get('code', res.status_code)}: {body.get('message', '')}"
    except ValueError:
        return f"HTTP {res.status_code}"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="X-AnyLabeling remote server backed by EdgeSAM")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    app = create_app(
        os.environ.get("EDGESAM_URL", "http://127.0.0.1:8000"),
        os.environ.get("EDGESAM_API_KEY") or None,
        os.environ.get("XANYLABELING_TOKEN") or None,
    )
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
