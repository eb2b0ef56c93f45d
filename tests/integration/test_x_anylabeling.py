"""X-AnyLabeling's "Remote Server" model against integrations/x_anylabeling over real loopback
HTTP, beside a real EdgeSAM service (deterministic fake backend).

The client side is replayed from X-AnyLabeling's own code, CVHub520/X-AnyLabeling at commit
f029505b4ee4eb69a56ef9b61cd09ba5c60decc3, anylabeling/services/auto_labeling/remote_server.py:
- RemoteServer.__init__: headers {"Content-Type": "application/json", "Token": api_key},
  predict_url = f"{server_url}/v1/predict";
- get_available_models: GET {server_url}/v1/models, models_info = response.json()["data"];
  get_batch_processing_mode: models_info[model_id].get("batch_processing_mode", "default");
- predict_shapes ("default" mode): image as f"data:{mime};base64,{...}" (mime from the file
  extension, image/bmp included), params {conf_threshold, iou_threshold, epsilon_factor,
  marks}, payload {"model", "image", "params"}; response.raise_for_status(); shapes from
  result["data"]["shapes"], each read as shape_data["label"], ["shape_type"], ["points"]
  (point[0], point[1]) and .get() of the rest.
Marks are what X-AnyLabeling's SAM models read (anylabeling/services/auto_labeling/__base__/
sam.py, get_input_points): {"type": "point", "data": [x, y], "label": 1|0} and
{"type": "rectangle", "data": [x0, y0, x1, y1], "label": 1}. Widget names are those
anylabeling/views/labeling/widgets/auto_labeling/auto_labeling.py update_remote_server_widgets
knows (all_widgets).
"""

from __future__ import annotations

import base64
import io

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from integrations.x_anylabeling.server import create_app, simplify_ring
from tests.conftest import UvicornThread
from tests.integration.conftest import RunningService, png_bytes, test_image

# X-AnyLabeling auto_labeling.py, update_remote_server_widgets: the widgets a remote model
# may show (any other name is ignored by getattr(self, name, None)).
XANY_REMOTE_WIDGETS = {
    "button_send",
    "button_add_point",
    "button_add_rect",
    "add_pos_rect",
    "add_neg_rect",
    "button_run_rect",
    "button_remove_point",
    "button_clear",
    "button_finish_object",
    "input_conf",
    "edit_conf",
    "input_iou",
    "edit_iou",
    "toggle_preserve_existing_annotations",
    "button_run",
    "edit_text",
    "mask_fineness_slider",
    "mask_fineness_value_label",
}


class RemoteServerClient:
    """remote_server.py's HTTP calls, as that file makes them (requests -> httpx)."""

    def __init__(self, server_url: str, api_key: str = "") -> None:
        self.server_url = server_url
        self.predict_url = f"{self.server_url}/v1/predict"
        self.headers = {"Content-Type": "application/json", "Token": api_key}
        self.timeout = 30
        self.models_info: dict = {}

    def get_available_models(self) -> dict:
        response = httpx.get(f"{self.server_url}/v1/models", headers=self.headers, timeout=30)
        response.raise_for_status()
        self.models_info = response.json().get("data", {})
        return self.models_info

    def predict_shapes(self, model_id: str, data_uri: str, marks: list) -> dict:
        params = {
            "conf_threshold": 0.0,
            "iou_threshold": 0.0,
            "epsilon_factor": 0.001,
        }
        if marks:
            params["marks"] = marks
        payload = {"model": model_id, "image": data_uri, "params": params}
        response = httpx.post(
            self.predict_url, json=payload, headers=self.headers, timeout=self.timeout
        )
        response.raise_for_status()
        result = response.json()
        data = result.get("data", {})
        shapes = []
        for shape_data in data.get("shapes", []):
            shapes.append(
                {
                    "label": shape_data["label"],
                    "shape_type": shape_data["shape_type"],
                    "points": [(p[0], p[1]) for p in shape_data["points"]],
                    "score": shape_data.get("score", None),
                    "group_id": shape_data.get("group_id", None),
                }
            )
        return {"shapes": shapes, "raw": result}


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('utf-8')}"


@pytest.fixture
def adapter(start_service):  # type: ignore[no-untyped-def]
    servers = []

    def start(token: str | None = None) -> tuple[RunningService, str]:
        rs = start_service()
        server = UvicornThread(create_app(rs.url, None, token)).start()
        servers.append(server)
        return rs, server.url

    yield start
    for server in servers:
        server.stop()


def embeds(rs: RunningService) -> float:
    text = rs.client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("edgesam_request_duration_seconds_count")
            and 'route="/v1/embed"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rasterise(points: list, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [np.round(np.asarray(points)).astype(np.int32)], 1)
    return out.astype(bool)


def test_models_list_is_what_the_combobox_reads(adapter) -> None:  # type: ignore[no-untyped-def]
    _, url = adapter()
    client = RemoteServerClient(url)
    models = client.get_available_models()
    assert list(models) == ["edgesam"]
    info = models["edgesam"]
    assert info.get("display_name")
    assert info.get("batch_processing_mode", "default") == "default"
    names = {w["name"] for w in info["widgets"]}
    assert names <= XANY_REMOTE_WIDGETS
    assert {"button_add_point", "button_add_rect", "button_clear"} <= names
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "healthy" and health["models_loaded"] == 1
    info = httpx.get(f"{url}/v1/models/edgesam/info").json()
    assert info["success"] and info["data"]["model_id"] == "edgesam"


def test_click_gives_the_services_mask_as_a_polygon_and_reuses_the_embedding(adapter) -> None:  # type: ignore[no-untyped-def]
    rs, url = adapter()
    image = test_image(240, 320, seed=3)
    png = png_bytes(image)
    client = RemoteServerClient(url)
    client.get_available_models()
    marks = [{"type": "point", "data": [160, 120], "label": 1}]
    got = client.predict_shapes("edgesam", data_uri(png, "image/png"), marks)
    assert got["raw"]["success"] is True
    shapes = got["shapes"]
    assert len(shapes) == 1
    shape = shapes[0]
    assert shape["label"] == "AUTOLABEL_OBJECT" and shape["shape_type"] == "polygon"
    assert len(shape["points"]) >= 3 and 0 < shape["score"] <= 1
    # the same click straight to the service: the polygon covers its mask
    image_id = rs.client.post("/v1/embed", content=png, headers={"content-type": "image/png"})
    answer = rs.client.post(
        "/v1/segment",
        json={"image_id": image_id.json()["image_id"], "points": [[160, 120]], "labels": [1]},
    ).json()["masks"][0]
    rle = answer["rle"]
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    poly = rasterise(shape["points"], 240, 320)
    iou = (poly & mask).sum() / (poly | mask).sum()
    assert iou > 0.95, iou
    # X-AnyLabeling re-sends the image on every click: no second upload, no second encode
    before, encodes = embeds(rs), rs.service.backend.encode_calls  # type: ignore[union-attr]
    assert before == 2  # the adapter's first upload and this test's own
    marks.append({"type": "point", "data": [170, 125], "label": 0})
    again = client.predict_shapes("edgesam", data_uri(png, "image/png"), marks)
    assert again["shapes"] and embeds(rs) == before
    assert rs.service.backend.encode_calls == encodes  # type: ignore[union-attr]


def test_bmp_rectangles_and_refusals(adapter) -> None:  # type: ignore[no-untyped-def]
    rs, url = adapter(token="secret-token")
    buf = io.BytesIO()
    Image.fromarray(test_image(200, 300, seed=4)).save(buf, format="BMP")
    uri = data_uri(buf.getvalue(), "image/bmp")  # remote_server.py maps .bmp to image/bmp
    client = RemoteServerClient(url, "secret-token")
    marks = [
        {"type": "rectangle", "data": [20, 20, 120, 100], "label": 1},
        {"type": "rectangle", "data": [250, 180, 150, 110], "label": 1},  # dragged backwards
        {"type": "point", "data": [60, 60], "label": 1},
    ]
    shapes = client.predict_shapes("edgesam", uri, marks)["shapes"]
    assert len(shapes) == 2  # one object per rectangle
    xs = [min(p[0] for p in s["points"]) for s in shapes]
    assert xs[0] < 60 < 150 <= xs[1] + 5
    # no marks yet: nothing to segment, nothing embedded
    assert client.predict_shapes("edgesam", uri, [])["shapes"] == []
    # wrong token, unknown model, broken image: success false (HTTP 200, as the server's docs)
    bad = RemoteServerClient(url, "wrong").predict_shapes("edgesam", uri, marks)["raw"]
    assert bad["success"] is False and bad["error"]["code"] == "UNAUTHORIZED"
    unknown = client.predict_shapes("sam3", uri, marks)["raw"]
    assert unknown["error"]["code"] == "MODEL_NOT_FOUND"
    broken = client.predict_shapes("edgesam", "data:image/png;base64,aGVsbG8=", marks)["raw"]
    assert broken["error"]["code"] == "INVALID_IMAGE"


def test_simplification_follows_x_anylabelings_epsilon() -> None:
    """epsilon = epsilon_factor * perimeter, as X-AnyLabeling's SAM post_process does with
    cv2.approxPolyDP: the vertex count is close to OpenCV's for the same ring."""
    yy, xx = np.mgrid[:300, :300]
    disc = ((xx - 150) ** 2 + (yy - 140) ** 2 <= 100**2).astype(np.uint8)
    contour = cv2.findContours(disc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0]
    flat = [float(v) for v in contour.reshape(-1)]
    for factor in (0.001, 0.005, 0.01):
        ours = simplify_ring(flat, factor)
        theirs = cv2.approxPolyDP(contour, factor * cv2.arcLength(contour, True), True)
        assert abs(len(ours) - len(theirs)) <= max(2, len(theirs) // 5), (factor, len(ours))
        area = cv2.contourArea(np.asarray(ours, np.float32))
        assert area == pytest.approx(cv2.contourArea(theirs), rel=0.02)
