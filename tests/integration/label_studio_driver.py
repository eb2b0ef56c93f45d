"""Drives a running Label Studio through label-studio-sdk, for test_label_studio_e2e.py. Runs
in the Python environment that has label-studio-sdk (not the project's), so it imports
nothing from the project.

    python label_studio_driver.py LS_URL API_TOKEN BACKEND_URL IMAGE_PATH LABEL_CONFIG_PATH

Creates a project, connects the ML backend (interactive), imports the image as a task
(uploaded to Label Studio: data.image is a /data/upload/... path), asks for an interactive
prediction for one positive click in the middle of the image, and prints one JSON object:
{"project", "ml_backend", "task", "image", "prediction"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
from label_studio_sdk.client import LabelStudio


def main(ls_url: str, token: str, backend_url: str, image_path: str, config_path: str) -> None:
    ls = LabelStudio(base_url=ls_url, api_key=token, timeout=120)
    project = ls.projects.create(title="EdgeSAM e2e", label_config=Path(config_path).read_text())
    ml = ls.ml.create(project=project.id, url=backend_url, is_interactive=True, title="EdgeSAM")
    # file upload: the SDK's import_tasks takes JSON tasks only
    with open(image_path, "rb") as f:
        res = httpx.post(
            f"{ls_url}/api/projects/{project.id}/import",
            headers={"Authorization": f"Token {token}"},
            files={"file": (Path(image_path).name, f, "image/png")},
            timeout=120,
        )
    res.raise_for_status()
    tasks = list(ls.tasks.list(project=project.id))
    task = tasks[0]
    context = {
        "result": [
            {
                "original_width": 160,
                "original_height": 120,
                "image_rotation": 0,
                "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Object"]},
                "is_positive": True,
                "id": "click1",
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "origin": "manual",
            }
        ]
    }
    raw = ls.ml.with_raw_response.predict_interactive(id=ml.id, task=task.id, context=context)
    body = raw.response.json() if hasattr(raw, "response") else raw.data
    print(
        json.dumps(
            {
                "project": project.id,
                "ml_backend": ml.id,
                "task": task.id,
                "image": task.data.get("image"),
                "prediction": body,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:6])
