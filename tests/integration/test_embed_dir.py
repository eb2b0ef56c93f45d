"""`edgesam embed-dir DIR` against a real service over loopback HTTP: counts, skips what the
cache holds (a re-run resumes), failures reported without stopping the run, a JSON line per
image, bounded concurrency."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from edgesam_client import cli
from service import codecs
from tests.integration.conftest import png_bytes, test_image


def dataset(root: Path) -> dict[str, bytes]:
    images = {
        "a.png": png_bytes(test_image(40, 50, seed=1)),
        "b.PNG": png_bytes(test_image(30, 60, seed=2)),
        "nested/c.png": png_bytes(test_image(50, 40, seed=3)),
        "nested/deeper/copy-of-a.png": png_bytes(test_image(40, 50, seed=1)),
        "broken.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
    }
    for name, data in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    return images


def run_cli(capsys, *argv: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_embed_dir_counts_skips_and_resumes(start_service, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rs = start_service()
    images = dataset(tmp_path / "photos")
    results = tmp_path / "ids.jsonl"
    argv = ["--server", rs.url, "embed-dir", str(tmp_path / "photos"), "--results", str(results)]
    code, summary = run_cli(capsys, *argv, "--concurrency", "1", "--quiet")
    assert code == 1  # one image failed
    assert summary["images"] == 5  # notes.txt is not an image
    assert (summary["embedded"], summary["cached"], summary["failed"]) == (3, 1, 1)
    assert summary["failures"][0]["code"] == "invalid_image"
    assert summary["failures"][0]["path"].endswith("broken.jpg")
    assert summary["images_per_second"] > 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    ids = {Path(r["path"]).name: r.get("image_id") for r in lines}
    assert ids["a.png"] == codecs.content_hash(images["a.png"]) == ids["copy-of-a.png"]
    for image_id in {v for v in ids.values() if v}:
        assert rs.client.head(f"/v1/embeddings/{image_id}").status_code == 200
    # a second run (an interrupted one, resumed) embeds nothing again
    encodes = rs.service.backend.encode_calls  # type: ignore[union-attr]
    code, again = run_cli(capsys, *argv, "--concurrency", "4", "--quiet")
    assert (again["embedded"], again["cached"], again["failed"]) == (0, 4, 1)
    assert rs.service.backend.encode_calls == encodes  # type: ignore[union-attr]
    assert len(results.read_text().splitlines()) == 10  # appended


def test_embed_dir_progress_and_refusals(start_service, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rs = start_service()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.png").write_bytes(png_bytes(test_image(20, 20)))
    (tmp_path / "one" / "sub").mkdir()
    (tmp_path / "one" / "sub" / "y.png").write_bytes(png_bytes(test_image(20, 20, seed=5)))
    code = cli.main(["--server", rs.url, "embed-dir", str(tmp_path / "one"), "--no-recursive"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["images"] == 1
    assert "1/1" in captured.err and "img/s" in captured.err  # the progress bar
    assert cli.main(["--server", rs.url, "embed-dir", str(tmp_path / "missing")]) == 2
    assert cli.main(["--server", rs.url, "embed-dir", str(tmp_path), "--concurrency", "0"]) == 2


def test_bounded_map_keeps_at_most_concurrency_in_flight() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return i

    got = list(cli.bounded_map(work, list(range(40)), 3))
    assert sorted(got) == list(range(40))
    assert state["peak"] == 3


@pytest.mark.parametrize("recursive", [True, False])
def test_find_images(tmp_path: Path, recursive: bool) -> None:
    dataset(tmp_path)
    names = [p.name for p in cli.find_images(tmp_path, recursive)]
    expected = ["a.png", "b.PNG", "broken.jpg"] + (["copy-of-a.png", "c.png"] if recursive else [])
    assert sorted(names) == sorted(expected)
