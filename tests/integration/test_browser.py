"""End-to-end test of the web page in headless Chromium against the real service.

Debian's Chromium is driven through Playwright's Python package (`executable_path`; Playwright's
own browser download is never used). The service is `python -m service` with the case A
reference weights. Every mask check is exact: the page's overlay canvas is read back at image
resolution (any painted pixel counts) and compared pixel for pixel with the mask the HTTP API
returns for the very request the page sent. Screenshots go to artifacts/browser/.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.integration.browser_util import (
    ARTIFACTS,
    ServiceProcess,
    chromium_browser,
    data_url_to_mask,
    describe_difference,
    find_chromium,
    new_page,
    png_file_to_mask,
    service_process,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = find_chromium()
WAIT_MS = 60_000


def _skip_reason() -> str | None:
    if CHROMIUM is None:
        return "no Chromium found (apt-get install -y chromium; or set EDGESAM_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install -e '.[dev]')"
    return None


SKIP_REASON = _skip_reason()
if SKIP_REASON:
    print(f"test_browser skipped: {SKIP_REASON}")
    pytestmark.append(pytest.mark.skip(reason=SKIP_REASON))


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def golden(reference_dir: Path) -> dict[str, np.ndarray]:
    with np.load(reference_dir / "case_a" / "golden.npz") as data:
        return {k: data[k] for k in ("image", "p1_point_coords", "p1_masks", "p3_box", "p3_masks")}


@pytest.fixture(scope="module")
def image_png(golden: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "case_a.png"
    Image.fromarray(golden["image"]).save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def service(reference_dir: Path) -> Iterator[ServiceProcess]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    weights = reference_dir / "case_a" / "weights.safetensors"
    with service_process(weights, ARTIFACTS / "service.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def browser(service: ServiceProcess):  # noqa: ANN201
    """Chromium, launched while the service is still loading its model."""
    assert CHROMIUM is not None
    with chromium_browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def service_url(service: ServiceProcess, browser) -> str:  # noqa: ANN001
    return service.wait_ready()


@pytest.fixture(scope="module")
def api(service_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def page(browser, service_url: str, image_png: Path):  # noqa: ANN001, ANN201
    """One page with case A opened through the file input (embedded once), decoding on the
    server (?decode=server; the local mode has its own page below)."""
    with new_page(browser) as pg:
        pg.goto(service_url + "?decode=server")
        pg.wait_for_function("() => window.EdgeSamPage !== undefined")
        shot(pg, "01_empty")
        pg.set_input_files("#file-input", str(image_png))
        pg.wait_for_function(
            "() => { const s = EdgeSamPage.state(); return s.imageId && s.busy === 0; }",
            timeout=WAIT_MS,
        )
        yield pg


# ------------------------------------------------------------------------------ helpers


def shot(page, name: str) -> None:  # noqa: ANN001
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def state(page) -> dict:  # noqa: ANN001
    return page.evaluate("() => EdgeSamPage.state()")


def wait_answer(page, calls_before: int) -> dict:  # noqa: ANN001
    """Wait until a new /v1/segment answer is drawn and the page is idle."""
    page.wait_for_function(
        """(n) => { const s = EdgeSamPage.state();
                    const seg = s.calls.filter(c => c.route === 'v1/segment').length;
                    return seg > n && s.busy === 0 && s.answered; }""",
        arg=calls_before,
        timeout=WAIT_MS,
    )
    return state(page)


def segment_calls(page) -> int:  # noqa: ANN001
    return sum(1 for c in state(page)["calls"] if c["route"] == "v1/segment")


def client_xy(page, x: int, y: int) -> tuple[float, float]:  # noqa: ANN001
    """Viewport coordinates of the centre of image pixel (x, y) on the page's canvas."""
    box = page.locator("#ui").bounding_box()
    st = state(page)
    return (
        box["x"] + (x + 0.5) * box["width"] / st["width"],
        box["y"] + (y + 0.5) * box["height"] / st["height"],
    )


def overlay(page) -> np.ndarray:  # noqa: ANN001
    return data_url_to_mask(page.evaluate("() => EdgeSamPage.overlayMask()"))


def rle_mask(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def api_masks(api: httpx.Client, body: dict) -> list[np.ndarray]:
    """The API's masks for exactly the request the page sent."""
    r = api.post("v1/segment", json=body)
    assert r.status_code == 200, r.text
    return [rle_mask(m["rle"]) for m in r.json()["masks"]]


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert np.array_equal(got, want), f"{what}: {describe_difference(got, want)}"


def reset(page) -> None:  # noqa: ANN001
    page.locator("#ui").focus()
    page.keyboard.press("Escape")  # leaves everything mode, or resets the prompts
    page.keyboard.press("r")
    page.wait_for_function("() => EdgeSamPage.state().prompt === null")
    assert not overlay(page).any()


# ------------------------------------------------------------------------------ tests


def test_page_served_and_embedded_once(page, api: httpx.Client) -> None:  # noqa: ANN001
    st = state(page)
    assert (st["width"], st["height"]) == (512, 512)
    assert [c["route"] for c in st["calls"]].count("v1/embed") == 1
    assert api.head(f"v1/embeddings/{st['imageId']}").status_code == 200


def test_click_negative_undo_and_candidates(page, api: httpx.Client, golden: dict) -> None:  # noqa: ANN001
    reset(page)
    embeds_before = [c["route"] for c in state(page)["calls"]].count("v1/embed")
    gx, gy = (int(v) for v in golden["p1_point_coords"][0])  # [[225, 110]]

    # Left click on the golden point: one foreground point, no mask_input_id yet.
    n = segment_calls(page)
    page.mouse.click(*client_xy(page, gx, gy))
    st = wait_answer(page, n)
    req = st["lastSegmentRequest"]
    assert req["points"] == [[gx, gy]] and req["labels"] == [1]
    assert "mask_input_id" not in req and req["num_masks"] == 1
    first = overlay(page)
    want = api_masks(api, req)[0]
    assert_same(first, want, "overlay after the golden click vs API")
    assert_same(first, golden["p1_masks"][0], "overlay after the golden click vs golden p1")
    first_mask_id = st["maskInputId"]
    assert first_mask_id
    shot(page, "02_click")

    # Right click inside the mask: a background point, refined from the previous answer.
    ys, xs = np.nonzero(first)
    k = len(xs) // 3
    bx, by = int(xs[k]), int(ys[k])
    n = segment_calls(page)
    page.mouse.click(*client_xy(page, bx, by), button="right")
    st = wait_answer(page, n)
    req = st["lastSegmentRequest"]
    assert req["points"] == [[gx, gy], [bx, by]] and req["labels"] == [1, 0]
    assert req["mask_input_id"] == first_mask_id
    second = overlay(page)
    assert_same(second, api_masks(api, req)[0], "overlay after the negative click vs API")
    assert not np.array_equal(second, first), "the negative click did not change the mask"
    shot(page, "03_negative_click")

    # Undo restores the first answer without a new request.
    n = segment_calls(page)
    page.keyboard.press("z")
    page.wait_for_function("() => EdgeSamPage.state().prompt.points.length === 1")
    assert_same(overlay(page), first, "overlay after undo vs the first answer")
    assert segment_calls(page) == n

    # Three candidates (M), pick the second (2): the overlay is the API's mask 2 of 3.
    page.keyboard.press("m")
    st = wait_answer(page, n)
    req = st["lastSegmentRequest"]
    assert req["num_masks"] == 3 and len(st["candidates"]) == 3
    page.keyboard.press("2")
    page.wait_for_function("() => EdgeSamPage.state().prompt.chosen === 1")
    assert_same(overlay(page), api_masks(api, req)[1], "overlay of candidate 2/3 vs API")
    assert page.locator("#candidates li").count() == 3
    shot(page, "04_candidates")

    # Back to one mask via the radio button; still only one embed.
    page.check('input[name="num-masks"][value="1"]')
    page.wait_for_function("() => EdgeSamPage.state().busy === 0 && EdgeSamPage.state().answered")
    assert [c["route"] for c in state(page)["calls"]].count("v1/embed") == embeds_before


def test_box_drag_and_exports(page, api: httpx.Client, golden: dict, tmp_path: Path) -> None:  # noqa: ANN001
    reset(page)
    x0, y0, x1, y1 = (int(v) for v in golden["p3_box"])  # [30, 15, 370, 511]
    n = segment_calls(page)
    page.mouse.move(*client_xy(page, x0, y0))
    page.mouse.down()
    page.mouse.move(*client_xy(page, (x0 + x1) // 2, (y0 + y1) // 2), steps=4)
    page.mouse.move(*client_xy(page, x1, y1), steps=4)
    page.mouse.up()
    st = wait_answer(page, n)
    req = st["lastSegmentRequest"]
    assert req["box"] == [x0, y0, x1, y1] and "points" not in req
    drawn = overlay(page)
    want = api_masks(api, req)[0]
    assert_same(drawn, want, "overlay after the box drag vs API")
    assert_same(drawn, golden["p3_masks"][0], "overlay after the box drag vs golden p3")
    shot(page, "05_box")

    # Mask PNG: the download equals the mask.
    with page.expect_download() as info:
        page.click("#export-png")
    png_path = ARTIFACTS / "export_mask.png"
    info.value.save_as(png_path)
    assert_same(png_file_to_mask(png_path), want, "exported PNG vs API")

    # COCO JSON: its RLE decodes to the mask.
    with page.expect_download() as info:
        page.click("#export-coco")
    coco_path = ARTIFACTS / "export_coco.json"
    info.value.save_as(coco_path)
    coco = json.loads(coco_path.read_text())
    assert coco["images"][0]["width"] == 512 and len(coco["annotations"]) == 1
    ann = coco["annotations"][0]
    assert_same(rle_mask(ann["segmentation"]), want, "exported COCO RLE vs API")
    assert ann["area"] == int(want.sum())

    # Cut-out: the image inside the mask's bbox, transparent outside the mask.
    with page.expect_download() as info:
        page.click("#export-cutout")
    cut_path = ARTIFACTS / "export_cutout.png"
    info.value.save_as(cut_path)
    cut = np.asarray(Image.open(cut_path).convert("RGBA"))
    bx, by, bw, bh = ann["bbox"]
    crop = want[by : by + bh, bx : bx + bw]
    assert cut.shape[:2] == crop.shape
    assert_same(cut[..., 3] > 0, crop, "cut-out alpha vs API mask")
    rgb = golden["image"][by : by + bh, bx : bx + bw]
    assert np.array_equal(cut[..., :3][crop], rgb[crop]), "cut-out pixels differ from the image"


def test_keyboard_only(page, api: httpx.Client) -> None:  # noqa: ANN001
    """Arrow keys move the cursor (3 px steps on 512 px), Enter adds a foreground point,
    Shift+Enter a background one, S exports the mask."""
    reset(page)
    page.locator("#ui").focus()
    x, y = state(page)["cursor"]
    for key in ("ArrowRight", "ArrowRight", "ArrowUp"):
        page.keyboard.press(key)
    n = segment_calls(page)
    page.keyboard.press("Enter")
    st = wait_answer(page, n)
    assert st["lastSegmentRequest"]["points"] == [[x + 6, y - 3]]
    page.keyboard.press("Shift+ArrowDown")  # 10x faster: 26 px
    n = segment_calls(page)
    page.keyboard.press("Shift+Enter")
    st = wait_answer(page, n)
    req = st["lastSegmentRequest"]
    assert req["points"] == [[x + 6, y - 3], [x + 6, y + 23]] and req["labels"] == [1, 0]
    want = api_masks(api, req)[0]
    assert_same(overlay(page), want, "overlay after keyboard prompts vs API")
    with page.expect_download() as info:
        page.keyboard.press("s")
    path = ARTIFACTS / "export_keyboard.png"
    info.value.save_as(path)
    assert_same(png_file_to_mask(path), want, "PNG exported with S vs API")


def test_reembeds_when_the_cache_forgot(page, api: httpx.Client) -> None:  # noqa: ANN001
    """embedding_not_found (here: the embedding deleted through the API) -> the page embeds
    the image again and retries the click."""
    reset(page)
    st = state(page)
    embeds = [c["route"] for c in st["calls"]].count("v1/embed")
    assert api.delete(f"v1/embeddings/{st['imageId']}").status_code == 204
    n = segment_calls(page)
    page.mouse.click(*client_xy(page, 300, 200))
    st = wait_answer(page, n)
    assert [c["route"] for c in st["calls"]].count("v1/embed") == embeds + 1
    assert [c["status"] for c in st["calls"] if c["route"] == "v1/segment"][-2:] == [404, 200]
    assert_same(overlay(page), api_masks(api, st["lastSegmentRequest"])[0], "after re-embed")


def test_everything_mode(page, api: httpx.Client) -> None:  # noqa: ANN001
    reset(page)
    st = state(page)
    probe = api.post("v1/everything", json={"image_id": st["imageId"], "points_per_side": 1})
    if probe.status_code == 501 and probe.json().get("code") == "unavailable_feature":
        pytest.skip(f"the service has no everything mode yet: {probe.json()['message']}")
    assert probe.status_code == 200, probe.text
    # With case A's random weights every mask spans the image: NMS off, thresholds at 0
    # (3 masks per grid point).
    page.locator("summary", has_text="Everything-mode settings").click()
    page.fill("#amg-pps", "2")
    page.fill("#amg-iou", "0")
    page.fill("#amg-stab", "0")
    page.fill("#amg-nms", "1")
    page.click("#everything")
    page.wait_for_function(
        "() => { const s = EdgeSamPage.state(); return s.mode === 'everything' && s.busy === 0; }",
        timeout=WAIT_MS,
    )
    st = state(page)
    assert st["everythingCount"] > 1
    assert page.evaluate("() => EdgeSamPage.overlayColours()") > 1
    # The drawn pixels are exactly the union of the masks the API answered.
    answered = page.evaluate("() => EdgeSamPage.everythingRles()")
    assert len(answered) == st["everythingCount"]
    union = np.logical_or.reduce([rle_mask(r) for r in answered])
    assert_same(overlay(page), union, "everything overlay vs the union of the API's masks")
    # Hover highlights one mask.
    page.mouse.move(*client_xy(page, 256, 256))
    page.wait_for_function(
        "() => document.getElementById('status').textContent.startsWith('Mask ')"
    )
    shot(page, "06_everything")
    page.keyboard.press("Escape")
    page.wait_for_function("() => EdgeSamPage.state().mode === 'prompt'")


def test_random_weights_banner(browser, service_url: str, api: httpx.Client) -> None:  # noqa: ANN001
    """The banner follows the service: hidden for real weights, unmissable for random ones
    (the random-weights answers are simulated here by rewriting /readyz)."""
    ready = api.get("readyz").json()
    with new_page(browser) as pg:
        pg.goto(service_url)
        pg.wait_for_function("() => window.EdgeSamPage !== undefined")
        pg.wait_for_timeout(300)
        assert pg.locator("#random-banner").is_visible() == bool(ready["random_weights"])

        def fake_random(route) -> None:  # noqa: ANN001
            body = {**ready, "random_weights": True}
            route.fulfill(
                status=200,
                json=body,
                headers={"X-EdgeSAM-Random-Weights": "true"},
            )

        pg.route("**/readyz", fake_random)
        pg.reload()
        pg.wait_for_selector("#random-banner", state="visible")
        shot(pg, "07_random_weights_banner")


def test_api_key_prompt(browser, service_url: str, image_png: Path) -> None:  # noqa: ANN001
    """A 401 makes the page ask for a key, then retry with 'Authorization: Bearer <key>'
    (the 401 is simulated here; the service's own key check has its own tests)."""
    seen: list[str | None] = []

    def needs_key(route) -> None:  # noqa: ANN001
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth != "Bearer sesame-1234":
            route.fulfill(
                status=401,
                json={"code": "unauthenticated", "message": "an API key is required"},
            )
        else:
            route.continue_()

    with new_page(browser) as pg:
        pg.route("**/v1/embed", needs_key)
        pg.goto(service_url)
        pg.wait_for_function("() => window.EdgeSamPage !== undefined")
        pg.set_input_files("#file-input", str(image_png))
        pg.wait_for_selector("#key-form", state="visible")
        pg.fill("#key-input", "sesame-1234")
        pg.press("#key-input", "Enter")
        pg.wait_for_function(
            "() => { const s = EdgeSamPage.state(); return s.imageId && s.busy === 0; }",
            timeout=WAIT_MS,
        )
        assert seen == [None, "Bearer sesame-1234"]
        assert pg.locator("#key-form").is_hidden()


def test_phone_layout(browser, service_url: str, image_png: Path) -> None:  # noqa: ANN001
    """A phone-sized viewport: no horizontal scrolling, the image fits, taps segment."""
    with new_page(browser, viewport={"width": 390, "height": 844}) as pg:
        pg.goto(service_url)
        pg.wait_for_function("() => window.EdgeSamPage !== undefined")
        pg.set_input_files("#file-input", str(image_png))
        pg.wait_for_function(
            "() => { const s = EdgeSamPage.state(); return s.imageId && s.busy === 0; }",
            timeout=WAIT_MS,
        )
        width = pg.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px wide)"
        box = pg.locator("#ui").bounding_box()
        assert box["width"] <= 390
        pg.mouse.click(box["x"] + box["width"] * 0.44, box["y"] + box["height"] * 0.22)
        pg.wait_for_function(
            "() => { const s = EdgeSamPage.state(); return s.answered && s.busy === 0; }",
            timeout=WAIT_MS,
        )
        assert overlay(pg).any()
        shot(pg, "08_phone")
        buf = io.BytesIO(pg.screenshot(full_page=True))
        assert Image.open(buf).size[0] == 390


# ------------------------------------------------------------------------------ local decoding


@pytest.fixture(scope="module")
def local_page(browser, service_url: str, image_png: Path):  # noqa: ANN001, ANN201
    """A page in its default mode (decoding in the browser), case A opened once."""
    with new_page(browser) as pg:
        pg.goto(service_url)
        pg.wait_for_function("() => window.EdgeSamPage !== undefined")
        pg.set_input_files("#file-input", str(image_png))
        pg.wait_for_function(
            "() => { const s = EdgeSamPage.state(); return s.imageId && s.busy === 0; }",
            timeout=WAIT_MS,
        )
        yield pg


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def local_decodes(page) -> int:  # noqa: ANN001
    return sum(1 for c in state(page)["calls"] if c["route"] == "local decode")


def wait_local(page, before: int) -> dict:  # noqa: ANN001
    page.wait_for_function(
        """(n) => { const s = EdgeSamPage.state();
                    const k = s.calls.filter(c => c.route === 'local decode').length;
                    return k > n && s.busy === 0 && s.answered; }""",
        arg=before,
        timeout=WAIT_MS,
    )
    return state(page)


def server_body(st: dict, image_id: str, mask_input_id: str | None = None) -> dict:
    req = st["lastLocalRequest"]
    body: dict = {"image_id": image_id, "num_masks": req["num_masks"]}
    if req["points"]:
        body["points"], body["labels"] = req["points"], req["labels"]
    if req["box"]:
        body["box"] = req["box"]
    if mask_input_id:
        body["mask_input_id"] = mask_input_id
    return body


def test_local_decoding_equals_the_server(local_page, api: httpx.Client, golden: dict) -> None:  # noqa: ANN001
    """Decoding in the browser (the default): the embedding and the decoder downloaded once,
    no /v1/segment call per click; every overlay equals the server's mask for the same
    prompt (IoU >= 0.99): a click, a refining background click, 3 candidates, a box. Then
    the server switch answers the same prompt the same way; both click times are shown."""
    pg = local_page
    st = state(pg)
    assert st["decodeMode"] == "browser" and st["localReady"], st
    download = st["embeddingDownload"]
    assert download["bytes"] == 1 * 256 * 64 * 64 * 4 + 128 and download["dtype"] == "float32"
    routes = [c["route"] for c in st["calls"]]
    assert routes.count("v1/embeddings/{id}") == 1
    assert routes.count("v1/models/decoder.onnx") == 1
    image_id = st["imageId"]
    gx, gy = (int(v) for v in golden["p1_point_coords"][0])

    n = local_decodes(pg)
    pg.mouse.click(*client_xy(pg, gx, gy))
    st = wait_local(pg, n)
    assert st["lastDecode"] == "browser" and not st["lastLocalRequest"]["refined"]
    first = overlay(pg)
    r = api.post("v1/segment", json=server_body(st, image_id))
    assert r.status_code == 200, r.text
    assert iou(first, rle_mask(r.json()["masks"][0]["rle"])) >= 0.99
    mask_id = r.json()["mask_input_id"]
    shot(pg, "10_local_click")

    # a background click refines the previous answer (its low-res logits as mask input)
    ys, xs = np.nonzero(first)
    bx, by = int(xs[len(xs) // 3]), int(ys[len(ys) // 3])
    n = local_decodes(pg)
    pg.mouse.click(*client_xy(pg, bx, by), button="right")
    st = wait_local(pg, n)
    assert st["lastLocalRequest"]["refined"] and st["lastLocalRequest"]["labels"] == [1, 0]
    second = overlay(pg)
    want = api_masks(api, server_body(st, image_id, mask_id))[0]
    assert iou(second, want) >= 0.99
    assert not np.array_equal(second, first)

    # three candidates: the chosen one (best score) is the server's same-index mask
    n = local_decodes(pg)
    pg.keyboard.press("m")
    st = wait_local(pg, n)
    assert len(st["candidates"]) == 3
    want = api_masks(api, server_body(st, image_id, mask_id))
    assert iou(overlay(pg), want[st["prompt"]["chosen"]]) >= 0.99
    pg.keyboard.press("1")
    pg.wait_for_function("() => EdgeSamPage.state().prompt.chosen === 0")
    assert iou(overlay(pg), want[0]) >= 0.99
    pg.check('input[name="num-masks"][value="1"]')
    pg.wait_for_function("() => EdgeSamPage.state().busy === 0 && EdgeSamPage.state().answered")

    # a box
    reset(pg)
    x0, y0, x1, y1 = (int(v) for v in golden["p3_box"])
    n = local_decodes(pg)
    pg.mouse.move(*client_xy(pg, x0, y0))
    pg.mouse.down()
    pg.mouse.move(*client_xy(pg, x1, y1), steps=6)
    pg.mouse.up()
    st = wait_local(pg, n)
    assert st["lastLocalRequest"]["box"] == [x0, y0, x1, y1]
    boxed = overlay(pg)
    assert iou(boxed, api_masks(api, server_body(st, image_id))[0]) >= 0.99
    shot(pg, "11_local_box")

    # the switch: the same box on the server
    n = segment_calls(pg)
    pg.check('input[name="decode-mode"][value="server"]')
    st = wait_answer(pg, n)
    assert st["lastDecode"] == "server" and st["decodeMode"] == "server"
    assert iou(overlay(pg), boxed) >= 0.99
    # back to the browser for a last click, answered locally again
    pg.check('input[name="decode-mode"][value="browser"]')
    pg.wait_for_function(
        "() => EdgeSamPage.state().lastDecode === 'browser' && EdgeSamPage.state().busy === 0"
    )

    times = state(pg)["clickTimes"]
    assert {t["mode"] for t in times} == {"browser", "server"}
    for mode in ("browser", "server"):
        shown = pg.locator(f"#click-{mode}").inner_text()
        assert "ms" in shown and "median" in shown, shown
    assert "MiB" in pg.locator("#local-status").inner_text()
    shot(pg, "12_local_times")
    (ARTIFACTS / "click_times.json").write_text(
        json.dumps({"clicks": times, "embedding": download, "decoder": st["decoderDownload"]})
    )
