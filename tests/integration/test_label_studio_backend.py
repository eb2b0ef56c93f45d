"""integrations/label_studio: Label Studio's ML backend protocol over real loopback HTTP, beside
a real EdgeSAM service (fake backend) and a stand-in for Label Studio's file server.

Pinned from HumanSignal/label-studio-ml-backend @ 5c12977fc02cee9b47b5f7a7a50c496f5ca61c73,
label_studio_ml/api.py (routes /health, /setup {"schema"} -> {"model_version"}, /predict
{"tasks", "label_config", "params": {"context"}} -> {"results": [...]}), its SAM example
(label_studio_ml/examples/segment_anything_model/model.py @ 005a6fe7: context regions with
original_width/height, value.x/y/width/height in percent, is_positive; BrushLabels answers
{"format": "rle", "rle", "brushlabels"}), and the brush RLE of label-studio-sdk's
converter/brush.py (encode_rle / decode_rle / mask_to_rle: RGBA repeated, wordsize 8, run sizes
[3, 4, 8, 16]). The end-to-end run against a real Label Studio is test_label_studio_e2e.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from integrations.label_studio.backend import brush_rle, coco_rle_decode, create_app
from service import codecs
from tests.conftest import UvicornThread
from tests.integration.conftest import png_bytes, test_image

CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Banana"/><Label value="Orange"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Banana"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Banana"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Banana"/></RectangleLabels>
</View>
"""
TOKEN = "ls-token-123"
IMAGE = png_bytes(test_image(120, 160, seed=11))


def decode_brush(rle: list[int]) -> np.ndarray:
    """label-studio-sdk's decode_rle (converter/brush.py), restated: the RGBA values."""
    bits = "".join(format(b, "08b") for b in rle)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        value = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        x = read(1)
        j = i + 1 + read(sizes[read(2)])
        if x:
            out[i:j] = read(word)
            i = j
        else:
            while i < j:
                out[i] = read(word)
                i += 1
    return out


@pytest.mark.parametrize("shape", [(1, 1), (7, 9), (300, 300), (64, 2000)])
def test_brush_rle_round_trips(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, dtype=bool)
    if shape[0] > 5:
        mask[2:5, 3:7] = True  # a block (runs of 12-16 values)
        mask[shape[0] - 1, shape[1] - 1] = True  # one pixel (a run of 4)
        mask[1, :] = rng.random(shape[1]) > 0.5  # short runs
    rgba = decode_brush(brush_rle(mask)).reshape(*shape, 4)
    assert np.array_equal(rgba[..., 3] > 0, mask)
    assert set(np.unique(rgba)) <= {0, 255}
    try:  # where label-studio-sdk is installed, byte-identical to its own encoder
        from label_studio_sdk.converter.brush import mask_to_rle
    except ImportError:
        return
    assert brush_rle(mask) == mask_to_rle(mask.astype(np.uint8) * 255)


def test_coco_rle_decode_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((37, 53)) > 0.6
    rle = codecs.mask_to_rle(mask)
    assert np.array_equal(coco_rle_decode(rle), mask)
    assert np.array_equal(
        coco_rle_decode(codecs.mask_to_rle(np.zeros((5, 4), bool))), np.zeros((5, 4))
    )


PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"  # a JWT's shape
ACCESS = "access-token-xyz"


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Label Studio's /data/upload/... file server: needs 'Authorization: Token <legacy key>'
    or 'Bearer <access>' (from POST /api/token/refresh/ {"refresh": <personal token>})."""

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        ok = self.path == "/api/token/refresh/" and body.get("refresh") == PAT
        answer = json.dumps({"access": ACCESS}).encode() if ok else b"{}"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") not in (f"Token {TOKEN}", f"Bearer {ACCESS}"):
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/data/upload/1/image.png":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        self.wfile.write(IMAGE)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def label_studio() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def backend(start_service, label_studio: str):  # type: ignore[no-untyped-def]
    servers = []

    def start(token: str | None = TOKEN):  # type: ignore[no-untyped-def]
        rs = start_service()
        server = UvicornThread(create_app(rs.url, label_studio, token)).start()
        servers.append(server)
        return rs, server.url

    yield start
    for server in servers:
        server.stop()


def click(x_pct: float, y_pct: float, positive: bool = True) -> dict:
    return {
        "original_width": 160,
        "original_height": 120,
        "image_rotation": 0,
        "value": {"x": x_pct, "y": y_pct, "width": 0.6, "keypointlabels": ["Banana"]},
        "is_positive": positive,
        "id": "k1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def test_health_setup_and_predict_from_a_click(backend) -> None:  # type: ignore[no-untyped-def]
    rs, url = backend()
    assert httpx.get(f"{url}/health").json()["status"] == "UP"
    setup = httpx.post(f"{url}/setup", json={"project": "1.1700000000", "schema": CONFIG})
    assert setup.status_code == 200 and setup.json()["model_version"]
    task = {"id": 1, "data": {"image": "/data/upload/1/image.png"}}
    body = {
        "tasks": [task],
        "project": "1.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": {"result": [click(50, 50)]}},
    }
    res = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert res.status_code == 200, res.text
    [prediction] = res.json()["results"]
    brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    polygons = [r for r in prediction["result"] if r["type"] == "polygonlabels"]
    assert len(brush) == 1 and polygons
    assert brush[0]["from_name"] == "tag" and brush[0]["to_name"] == "image"
    assert brush[0]["value"]["brushlabels"] == ["Banana"] and brush[0]["value"]["format"] == "rle"
    got = decode_brush(brush[0]["value"]["rle"]).reshape(120, 160, 4)[..., 3] > 0
    # the service's own mask for the same click (80, 60 in pixels)
    image_id = codecs.content_hash(IMAGE)
    direct = rs.client.post(
        "/v1/segment", json={"image_id": image_id, "points": [[80, 60]], "labels": [1]}
    ).json()["masks"][0]["rle"]
    expected = mask_utils.decode({"size": direct["size"], "counts": direct["counts"].encode()})
    assert np.array_equal(got, expected.astype(bool))
    pts = np.asarray(polygons[0]["value"]["points"])
    assert polygons[0]["value"]["polygonlabels"] == ["Banana"]
    assert ((pts >= 0) & (pts <= 100)).all() and len(pts) >= 3
    # a second click on the same task: the image is not uploaded again
    encodes = rs.service.backend.encode_calls  # type: ignore[union-attr]
    body["params"]["context"]["result"].append(click(10, 10, positive=False))
    assert httpx.post(f"{url}/predict", json=body, timeout=60).status_code == 200
    assert rs.service.backend.encode_calls == encodes  # type: ignore[union-attr]


def test_rectangle_prompt_and_no_context(backend) -> None:  # type: ignore[no-untyped-def]
    _, url = backend()
    rect = {
        "original_width": 160,
        "original_height": 120,
        "value": {"x": 10, "y": 20, "width": 50, "height": 40, "rectanglelabels": ["Banana"]},
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
    }
    task = {"id": 1, "data": {"image": "/data/upload/1/image.png"}}
    res = httpx.post(
        f"{url}/predict",
        json={"tasks": [task], "label_config": CONFIG, "params": {"context": {"result": [rect]}}},
        timeout=60,
    )
    assert res.status_code == 200, res.text
    brush = res.json()["results"][0]["result"][0]
    mask = decode_brush(brush["value"]["rle"]).reshape(120, 160, 4)[..., 3] > 0
    ys, xs = np.nonzero(mask)
    assert xs.min() >= 14 and xs.max() <= 98 and ys.min() >= 22 and ys.max() <= 74  # in the box
    # a plain prediction request (no interaction): nothing to pre-annotate
    res = httpx.post(f"{url}/predict", json={"tasks": [task], "label_config": CONFIG, "params": {}})
    assert res.status_code == 200 and res.json()["results"] == []


def test_label_studio_token_is_needed_and_bad_configs_refused(backend) -> None:  # type: ignore[no-untyped-def]
    _, url = backend(token=None)
    task = {"id": 1, "data": {"image": "/data/upload/1/image.png"}}
    body = {
        "tasks": [task],
        "label_config": CONFIG,
        "params": {"context": {"result": [click(50, 50)]}},
    }
    res = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert res.status_code == 502 and "401" in res.json()["error"]
    bad = httpx.post(
        f"{url}/setup", json={"project": "1.1", "schema": "<View><Text name='t'/></View>"}
    )
    assert bad.status_code == 400


def test_personal_access_token_is_exchanged(backend) -> None:  # type: ignore[no-untyped-def]
    _, url = backend(token=PAT)
    task = {"id": 1, "data": {"image": "/data/upload/1/image.png"}}
    body = {
        "tasks": [task],
        "label_config": CONFIG,
        "params": {"context": {"result": [click(50, 50)]}},
    }
    res = httpx.post(f"{url}/predict", json=body, timeout=60)
    assert res.status_code == 200, res.text
    assert res.json()["results"][0]["result"]
