"""The Label Studio ML backend against a real Label Studio: PyPI's `label-studio` on loopback
with SQLite, a project created through `label-studio-sdk`, the backend connected
(interactive), an image task imported (uploaded, so the backend fetches it from Label Studio
with the API token), and a prediction for one click through Label Studio's
/api/ml/{id}/interactive-annotating.

Label Studio is heavy (Django; `pip install label-studio label-studio-sdk` took 301 s here and
its first start 104-173 s), so it lives in a venv of its own, outside the project's
dependencies: set EDGESAM_LABEL_STUDIO_VENV to it (python3 -m venv /opt/ls &&
/opt/ls/bin/pip install label-studio label-studio-sdk). Without it the test is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from integrations.label_studio.backend import create_app
from service import codecs
from tests.conftest import UvicornThread, free_port
from tests.integration.conftest import png_bytes, test_image
from tests.integration.test_label_studio_backend import decode_brush

VENV = os.environ.get("EDGESAM_LABEL_STUDIO_VENV")
TOKEN = "e2e0123456789abcdef0123456789abcdef0123"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
</View>"""

pytestmark = pytest.mark.skipif(
    not VENV or not (Path(VENV) / "bin" / "label-studio").exists(),
    reason="set EDGESAM_LABEL_STUDIO_VENV to a venv with label-studio and label-studio-sdk",
)


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {
        **os.environ,
        # the backend runs on loopback, which Label Studio's SSRF guard blocks by default
        "USE_DEFAULT_BANNED_SUBNETS": "false",
    }
    proc = subprocess.Popen(
        [
            str(Path(VENV or "") / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--username",
            "e2e@example.com",
            "--password",
            "e2e-password-1",
            "--user-token",
            TOKEN,
            "--enable-legacy-api-token",
        ],
        stdout=open(data / "label-studio.log", "wb"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (data / "label-studio.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Label Studio did not start:\n{log}")
            time.sleep(2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_prediction_for_a_click_through_label_studio(
    label_studio: str, start_service, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rs = start_service()
    backend = UvicornThread(create_app(rs.url, label_studio, TOKEN)).start()
    try:
        image = png_bytes(test_image(120, 160, seed=11))
        (tmp_path / "photo.png").write_bytes(image)
        (tmp_path / "config.xml").write_text(CONFIG)
        driver = Path(__file__).with_name("label_studio_driver.py")
        run = subprocess.run(
            [
                str(Path(VENV or "") / "bin" / "python"),
                str(driver),
                label_studio,
                TOKEN,
                backend.url,
                str(tmp_path / "photo.png"),
                str(tmp_path / "config.xml"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        out = json.loads(run.stdout.strip().splitlines()[-1])
        assert out["image"].startswith("/data/upload/")  # served by Label Studio, token needed
        [region] = out["prediction"]["data"]["result"]
        assert region["type"] == "brushlabels" and region["from_name"] == "tag"
        assert region["value"]["brushlabels"] == ["Object"]
        got = decode_brush(region["value"]["rle"]).reshape(120, 160, 4)[..., 3] > 0
        direct = rs.client.post(
            "/v1/segment",
            json={"image_id": codecs.content_hash(image), "points": [[80, 60]], "labels": [1]},
        ).json()["masks"][0]["rle"]
        expected = mask_utils.decode({"size": direct["size"], "counts": direct["counts"].encode()})
        assert np.array_equal(got, expected.astype(bool))
    finally:
        backend.stop()
