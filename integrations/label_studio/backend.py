"""Label Studio ML backend answered by an EdgeSAM service (interactive pre-annotation).

Label Studio's ML backend protocol (HumanSignal/label-studio-ml-backend, label_studio_ml/api.py):

    GET  /health, GET /      {"status": "UP", "model_class": ...}
    POST /setup              {"project": "<id>.<ts>", "schema": label config, ...}
                          -> {"model_version": ...}
    POST /predict            {"tasks": [...], "project", "label_config", "params": {"context":
                              {"result": [keypointlabels / rectanglelabels regions]}}}
                          -> {"results": [{"result": [...], "score", "model_version"}]}
    POST /webhook            training events (accepted, nothing is trained)

Smart KeyPointLabels (is_positive true/false) and RectangleLabels come in percent of the
image; the answer is a BrushLabels region in Label Studio's brush RLE and/or PolygonLabels
regions (one per part; Label Studio polygons have no holes), whichever the label config has.

Task images: paths on the Label Studio server (/data/upload/..., /data/local-files/...) are
fetched from LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (a legacy token, or a personal access
token exchanged for an access token at /api/token/refresh/); any other http(s) URL is handed to
the EdgeSAM service as {"url": ...} (fetched there only where EDGESAM_URL_ALLOWLIST lets it),
never fetched here. The image is uploaded to EdgeSAM only when its embedding is not cached.

    EDGESAM_URL=http://edgesam:8000 LABEL_STUDIO_URL=http://label-studio:8080 \\
    LABEL_STUDIO_API_KEY=... python -m integrations.label_studio.backend --port 9090

Needs fastapi, httpx, uvicorn and numpy.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import os
import uuid
import xml.etree.ElementTree as ET
from typing import Any, AsyncIterator
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

MODEL_VERSION = "edgesam"
TIMEOUT_S = 60.0
MAX_IMAGE_BYTES = 64 * 1024 * 1024


# -- Label Studio's brush RLE (label_studio_converter / label_studio_sdk.converter.brush) ------
def _bits(value: int, width: int) -> str:
    return format(value, f"0{width}b")


def brush_rle(mask: np.ndarray) -> list[int]:
    """A HxW boolean mask -> Label Studio's brush RLE (`value.rle` of a BrushLabels region):
    the RGBA image (4 channels of 0/255) flattened, then encode_rle with wordsize 8 and run
    sizes [3, 4, 8, 16], as label_studio_sdk.converter.brush.mask_to_rle writes it."""
    flat = np.repeat(np.where(mask.reshape(-1), 255, 0).astype(np.uint8), 4)
    out = [_bits(flat.size, 32), _bits(7, 5), "".join(_bits(s - 1, 4) for s in (3, 4, 8, 16))]
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1])
        ends = np.append(change, flat.size - 1)
        starts = np.concatenate(([0], ends[:-1] + 1))
        for start, end in zip(starts.tolist(), ends.tolist()):
            value, length = _bits(int(flat[start]), 8), end - start + 1
            if length == 1:
                out.append("0" + "00" + "000" + value)
            elif length <= 8:
                out.append("1" + "00" + _bits(length - 1, 3) + value)
            elif length <= 16:
                out.append("1" + "01" + _bits(length - 1, 4) + value)
            elif length <= 256:
                out.append("1" + "10" + _bits(length - 1, 8) + value)
            else:
                while length > 2**16:
                    out.append("1" + "11" + _bits(2**16 - 1, 16) + value)
                    length -= 2**16
                out.append("1" + "11" + _bits(length - 1, 16) + value)
    bits = "".join(out)
    bits += "0" * (8 - len(bits) % 8)  # as the reference: always pads, a full byte if aligned
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


# -- the label config -------------------------------------------------------------------------
def parse_config(label_config: str) -> dict[str, Any]:
    """The tags this backend reads and writes: {"image": (name, value key), "brush": name or
    None, "polygon": name or None}; only tags pointing at the image."""
    root = ET.fromstring(label_config)
    images = [el for el in root.iter() if el.tag == "Image"]
    if not images:
        raise ValueError("the label config has no <Image> tag")
    image = images[0]
    name, value = image.get("name", "image"), image.get("value", "$image").lstrip("$")
    found: dict[str, Any] = {"image": (name, value), "brush": None, "polygon": None}
    for el in root.iter():
        if el.get("toName") != name:
            continue
        if el.tag == "BrushLabels" and found["brush"] is None:
            found["brush"] = el.get("name")
        if el.tag == "PolygonLabels" and found["polygon"] is None:
            found["polygon"] = el.get("name")
    if not found["brush"] and not found["polygon"]:
        raise ValueError("the label config has no BrushLabels or PolygonLabels for the image")
    return found


def prompts_from_context(context: dict) -> tuple[dict, str | None, int, int]:
    """Label Studio's interactive context -> (EdgeSAM prompt fields, the label, width, height).
    Keypoints and rectangles are in percent of the original image."""
    regions = (context or {}).get("result") or []
    if not regions:
        return {}, None, 0, 0
    width = int(regions[0]["original_width"])
    height = int(regions[0]["original_height"])
    points, labels, box, label = [], [], None, None
    for region in regions:
        kind, value = region.get("type"), region.get("value") or {}
        names = value.get(kind) or []
        label = names[0] if names else label
        x = float(value["x"]) * width / 100
        y = float(value["y"]) * height / 100
        if kind == "keypointlabels":
            points.append([x, y])
            labels.append(1 if region.get("is_positive", True) else 0)
        elif kind == "rectanglelabels":
            w = float(value["width"]) * width / 100
            h = float(value["height"]) * height / 100
            box = [x, y, x + w, y + h]
    fields: dict = {}
    if points:
        fields.update(points=points, labels=labels)
    if box is not None:
        fields["box"] = box
    return fields, label, width, height


def clamp_prompt(fields: dict, width: int, height: int) -> dict:
    """Clicks on the image's last row/column round to its edge, not past it."""
    out = dict(fields)
    if "points" in out:
        out["points"] = [
            [min(max(x, 0.0), width), min(max(y, 0.0), height)] for x, y in out["points"]
        ]
    if "box" in out:
        x0, y0, x1, y1 = out["box"]
        out["box"] = [max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height)]
    return out


def create_app(
    edgesam_url: str,
    label_studio_url: str | None = None,
    label_studio_api_key: str | None = None,
    edgesam_api_key: str | None = None,
) -> FastAPI:
    edgesam = httpx.AsyncClient(
        base_url=edgesam_url.rstrip("/"),
        timeout=TIMEOUT_S,
        headers={"X-API-Key": edgesam_api_key} if edgesam_api_key else {},
    )
    ls_base = (label_studio_url or "").rstrip("/")
    ls = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
    # A personal access token (a JWT: three dot-separated parts) is a refresh token: Label
    # Studio wants "Bearer <access>" from POST /api/token/refresh/; a legacy token goes as
    # "Token <key>".
    is_pat = bool(label_studio_api_key) and str(label_studio_api_key).count(".") == 2
    access: dict[str, str] = {}

    async def ls_auth(renew: bool = False) -> dict[str, str]:
        if not label_studio_api_key:
            return {}
        if not is_pat:
            return {"Authorization": f"Token {label_studio_api_key}"}
        if renew or "token" not in access:
            res = await ls.post(
                f"{ls_base}/api/token/refresh/", json={"refresh": label_studio_api_key}
            )
            if res.status_code != 200:
                raise BackendError(f"Label Studio refused the access token: HTTP {res.status_code}")
            access["token"] = str(res.json()["access"])
        return {"Authorization": f"Bearer {access['token']}"}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await edgesam.aclose()
        await ls.aclose()

    app = FastAPI(title="EdgeSAM Label Studio ML backend", lifespan=lifespan)

    async def image_id_for(url: str) -> str:
        """The EdgeSAM image_id of a task's image, embedding it when not cached."""
        if url.startswith("data:"):
            data = base64.b64decode(url.split(",", 1)[1])
            return await embed_bytes(data)
        parts = urlsplit(url)
        on_label_studio = not parts.netloc or (
            ls_base and urljoin(ls_base + "/", url).startswith(ls_base + "/")
        )
        if on_label_studio:
            if not ls_base:
                raise BackendError("set LABEL_STUDIO_URL to fetch task images from Label Studio")
            data = await fetch_from_label_studio(urljoin(ls_base + "/", url))
            return await embed_bytes(data)
        res = await edgesam.post("/v1/embed", json={"url": url})
        if res.status_code != 200:
            raise BackendError(f"EdgeSAM could not embed {url}: {res.text}")
        return str(res.json()["image_id"])

    async def fetch_from_label_studio(url: str) -> bytes:
        for attempt in range(2):  # a second time with a fresh access token after a 401
            async with ls.stream("GET", url, headers=await ls_auth(renew=attempt > 0)) as res:
                if res.status_code == 401 and is_pat and attempt == 0:
                    continue
                if res.status_code != 200:
                    raise BackendError(
                        f"Label Studio answered HTTP {res.status_code} for the image"
                    )
                data = bytearray()
                async for chunk in res.aiter_bytes():
                    data.extend(chunk)
                    if len(data) > MAX_IMAGE_BYTES:
                        raise BackendError("the task image is too large")
                return bytes(data)
        raise BackendError("Label Studio refused the access token")

    async def embed_bytes(data: bytes) -> str:
        image_id = hashlib.sha256(data).hexdigest()
        if (await edgesam.head(f"/v1/embeddings/{image_id}")).status_code == 200:
            return image_id
        files = {"file": ("image", data, "application/octet-stream")}
        res = await edgesam.post("/v1/embed", files=files)
        if res.status_code != 200:
            raise BackendError(f"EdgeSAM could not embed the task image: {res.text}")
        return str(res.json()["image_id"])

    async def predict_task(task: dict, config: dict, context: dict) -> dict | None:
        fields, label, width, height = prompts_from_context(context)
        if not fields:
            return None  # no click yet: nothing to pre-annotate
        image_name, value_key = config["image"]
        url = (task.get("data") or {}).get(value_key)
        if not isinstance(url, str) or not url:
            raise BackendError(f"the task has no image under data.{value_key}")
        image_id = await image_id_for(url)
        body = {
            "image_id": image_id,
            **clamp_prompt(fields, width, height),
            "output": ["rle", "polygons"],
        }
        res = await edgesam.post("/v1/segment", json=body)
        if res.status_code != 200:
            raise BackendError(f"EdgeSAM segment failed: {res.text}")
        mask_item = res.json()["masks"][0]
        h, w = mask_item["rle"]["size"]
        results = []
        if config["brush"]:
            results.append(
                {
                    "id": uuid.uuid4().hex[:10],
                    "from_name": config["brush"],
                    "to_name": image_name,
                    "original_width": w,
                    "original_height": h,
                    "image_rotation": 0,
                    "type": "brushlabels",
                    "value": {
                        "format": "rle",
                        "rle": brush_rle(coco_rle_decode(mask_item["rle"])),
                        "brushlabels": [label] if label else [],
                    },
                    "score": mask_item["score"],
                    "readonly": False,
                }
            )
        if config["polygon"]:
            for ring in mask_item.get("polygons") or []:
                results.append(
                    {
                        "id": uuid.uuid4().hex[:10],
                        "from_name": config["polygon"],
                        "to_name": image_name,
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "type": "polygonlabels",
                        "value": {
                            "points": [
                                [ring[i] * 100 / w, ring[i + 1] * 100 / h]
                                for i in range(0, len(ring), 2)
                            ],
                            "closed": True,
                            "polygonlabels": [label] if label else [],
                        },
                        "score": mask_item["score"],
                        "readonly": False,
                    }
                )
        return {"result": results, "score": mask_item["score"], "model_version": MODEL_VERSION}

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "UP", "model_class": "EdgeSAM"}

    @app.post("/setup")
    async def setup(request: Request) -> Any:
        data = await request.json()
        try:
            parse_config(data.get("schema") or "")
        except (ValueError, ET.ParseError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"model_version": MODEL_VERSION}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        data = await request.json()
        params = data.get("params") or {}
        try:
            config = parse_config(data.get("label_config") or "")
            results = []
            for task in data.get("tasks") or []:
                prediction = await predict_task(task, config, params.get("context") or {})
                if prediction is not None:
                    results.append(prediction)
        except (ValueError, ET.ParseError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except BackendError as exc:
            return JSONResponse({"error": str(exc)}, status_code=502)
        return {"results": results}

    @app.post("/webhook")
    async def webhook() -> Any:
        return JSONResponse({"status": "ok", "result": None}, status_code=201)

    @app.get("/metrics")
    async def metrics() -> dict:
        return {}

    return app


class BackendError(Exception):
    """EdgeSAM or Label Studio could not serve a prediction."""


def coco_rle_decode(rle: dict) -> np.ndarray:
    """COCO compressed RLE (EdgeSAM's `rle`) -> HxW bool, column-major as pycocotools."""
    h, w = rle["size"]
    counts, value, i, s = [], 0, 0, rle["counts"].encode()
    while i < len(s):  # the LEB128-like decoding of pycocotools' rleFrString
        x, k, more = 0, 0, True
        while more:
            c = s[i] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for n in counts:
        if value:
            flat[pos : pos + n] = True
        pos += n
        value ^= 1
    return flat.reshape(w, h).T


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Label Studio ML backend backed by EdgeSAM")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9090)
    args = parser.parse_args(argv)
    app = create_app(
        os.environ.get("EDGESAM_URL", "http://127.0.0.1:8000"),
        os.environ.get("LABEL_STUDIO_URL") or None,
        os.environ.get("LABEL_STUDIO_API_KEY") or None,
        os.environ.get("EDGESAM_API_KEY") or None,
    )
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()


__all__ = ["brush_rle", "coco_rle_decode", "create_app", "parse_config", "prompts_from_context"]
