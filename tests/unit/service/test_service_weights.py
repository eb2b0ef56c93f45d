"""The checkpoint download: verified by a strict load before it is kept. No network here:
file:// URLs and a loopback HTTP server stand in for the authors' host."""

from __future__ import annotations

import functools
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service import weights
from service.weights import CHECKPOINTS, DownloadError, download


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from engine.modeling import EdgeSam

    path = tmp_path_factory.mktemp("src") / "edge_sam.pth"
    torch.save({"model": EdgeSam().state_dict()}, path)  # the official file's layout
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_official_urls() -> None:
    assert CHECKPOINTS["edge_sam"].startswith("https://huggingface.co/spaces/chongzhou/EdgeSAM/")
    assert CHECKPOINTS["edge_sam_3x"].endswith("/weights/edge_sam_3x.pth")
    assert "non-commercial" in weights.LICENSE_NOTICE.lower()


def test_file_url_download_is_verified_and_kept(
    good_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cache"
    path = download("edge_sam", dest, url=good_checkpoint.as_uri(), progress=False)
    assert path == dest / "edge_sam.pth"
    assert path.read_bytes() == good_checkpoint.read_bytes()
    assert "S-Lab" in capsys.readouterr().err
    assert list(dest.iterdir()) == [path]  # no partial files left


def test_loopback_http_download_with_progress(
    good_checkpoint: Path, http_root, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, root = http_root
    (root / "edge_sam_3x.pth").write_bytes(good_checkpoint.read_bytes())
    path = download("edge_sam_3x", tmp_path, url=f"{base}/edge_sam_3x.pth", progress=True)
    assert path.is_file()
    assert "edge_sam_3x.pth" in capsys.readouterr().err  # the progress bar


@pytest.mark.parametrize("damage", ["truncate", "wrong_model"])
def test_bad_downloads_are_not_kept(good_checkpoint: Path, tmp_path: Path, damage: str) -> None:
    src = tmp_path / "bad.pth"
    if damage == "truncate":
        src.write_bytes(good_checkpoint.read_bytes()[:100_000])
    else:
        torch.save({"model": {"some.weight": torch.zeros(3)}}, src)
    dest = tmp_path / "cache"
    with pytest.raises(DownloadError):
        download("edge_sam", dest, url=src.as_uri(), progress=False)
    assert not (dest / "edge_sam.pth").exists()
    assert list(dest.iterdir()) == []


def test_missing_source_is_an_error(tmp_path: Path, http_root) -> None:
    base, _ = http_root
    with pytest.raises(DownloadError):
        download("edge_sam", tmp_path, url=f"{base}/nothing.pth", progress=False, timeout=5)


def test_command_line(good_checkpoint: Path, tmp_path: Path, repo_root: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.weights",
            "download",
            "edge_sam",
            "--dir",
            str(tmp_path),
            "--url",
            good_checkpoint.as_uri(),
            "--no-progress",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "edge_sam.pth")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.weights",
            "download",
            "edge_sam",
            "--dir",
            str(tmp_path / "x"),
            "--url",
            (tmp_path / "missing.pth").as_uri(),
            "--no-progress",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 1 and "could not download" in bad.stderr
