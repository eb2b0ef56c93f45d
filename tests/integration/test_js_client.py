"""The JavaScript client (clients/js) against a real service: this test starts the service with
the reference weights over loopback HTTP and runs the client's `node --test` suite on it
(embed, segment, the embedding and decoder downloads, local decoding with onnxruntime-node)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningService

JS_DIR = REPO_ROOT / "clients" / "js"
API_KEY = "js-client-key-1"


def test_js_client_against_the_service(start_service, reference_dir: Path, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (.ci/run uses the machine's Node 20)")
    if not (JS_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(
            "clients/js has no node_modules: run `npm ci --ignore-scripts` there (.ci/run does)"
        )
    import torch

    from engine.loader import load_model

    torch.set_num_threads(2)
    backend = load_model(reference_dir / "case_a" / "weights.safetensors")
    rs: RunningService = start_service(
        backend=backend, api_keys=API_KEY, engine_cache_dir=tmp_path / "engines"
    )
    with np.load(reference_dir / "case_a" / "golden.npz") as z:
        image = np.ascontiguousarray(z["image"][:384])  # non-square: 512 x 384
    png = tmp_path / "image.png"
    Image.fromarray(image).save(png)
    env = {
        **os.environ,
        "EDGESAM_TEST_URL": rs.url,
        "EDGESAM_TEST_IMAGE": str(png),
        "EDGESAM_TEST_API_KEY": API_KEY,
    }
    result = subprocess.run(
        [node, "--test", "test/"],
        cwd=JS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout and "# pass 7" in result.stdout, result.stdout[-3000:]
