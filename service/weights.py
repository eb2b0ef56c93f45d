"""`python -m service.weights download [edge_sam|edge_sam_3x]`: fetch an official EdgeSAM
checkpoint into the weights cache folder, check it loads strictly, and only then keep it.

The checkpoints are published by the EdgeSAM authors under the NTU S-Lab License 1.0, which
allows NON-COMMERCIAL use only; the command prints this before downloading.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from pathlib import Path

from tqdm import tqdm

from engine.checkpoint import CheckpointError, load_into, read_state_dict
from engine.modeling import EdgeSam
from service.config import Settings

BASE_URL = "https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights"
CHECKPOINTS = {
    "edge_sam": f"{BASE_URL}/edge_sam.pth",
    "edge_sam_3x": f"{BASE_URL}/edge_sam_3x.pth",
}
LICENSE_NOTICE = (
    "EdgeSAM checkpoints are released by their authors under the NTU S-Lab License 1.0: "
    "non-commercial use only (https://github.com/chongzhou96/EdgeSAM/blob/master/LICENSE)."
)
MAX_BYTES = 1 << 30  # the official files are ~40 MB; refuse anything absurd
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """The download failed, or the file is not a loadable EdgeSAM checkpoint."""


def default_dir() -> Path:
    env = os.environ.get("EDGESAM_WEIGHTS_DIR")
    if env:
        return Path(env)
    return Settings.model_fields["weights_dir"].default_factory()  # type: ignore[misc]


def verify(path: Path) -> None:
    """Load the file strictly into EdgeSAM; raise DownloadError naming what is wrong."""
    try:
        load_into(EdgeSam(), read_state_dict(path), str(path))
    except CheckpointError as exc:
        raise DownloadError(f"the downloaded file is not an EdgeSAM checkpoint: {exc}") from exc


def _progress_bar(desc: str, total: int | None, enabled: bool) -> tqdm:
    return tqdm(
        total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled, file=sys.stderr
    )


def download(
    name: str = "edge_sam",
    dest_dir: Path | None = None,
    url: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch `name` to `dest_dir/<name>.pth` (verified) and return its path."""
    if name not in CHECKPOINTS:
        raise DownloadError(f"unknown checkpoint {name!r}; choose one of {sorted(CHECKPOINTS)}")
    dest_dir = Path(dest_dir) if dest_dir is not None else default_dir()
    target = dest_dir / f"{name}.pth"
    if target.is_file() and not force:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    source = url or CHECKPOINTS[name]
    print(LICENSE_NOTICE, file=sys.stderr)
    tmp = dest_dir / f".{name}.pth.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            if total and total > MAX_BYTES:
                raise DownloadError(f"{source} is {total} bytes; refusing more than {MAX_BYTES}")
            with open(tmp, "wb") as out, _progress_bar(f"{name}.pth", total, progress) as bar:
                size = 0
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > MAX_BYTES:
                        raise DownloadError(f"{source} exceeds {MAX_BYTES} bytes")
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise DownloadError(f"{source}: got {size} of {total} bytes")
        verify(tmp)
        os.replace(tmp, target)
    except OSError as exc:
        raise DownloadError(f"could not download {source}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.weights", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="download and verify an official checkpoint")
    dl.add_argument("name", nargs="?", default="edge_sam", choices=sorted(CHECKPOINTS))
    dl.add_argument("--dir", type=Path, default=None, help="folder (default: the weights cache)")
    dl.add_argument("--url", default=None, help="download from here instead (mirrors, tests)")
    dl.add_argument("--force", action="store_true", help="download even if present")
    dl.add_argument("--no-progress", action="store_true")
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    args = parser.parse_args(argv)
    try:
        path = download(
            args.name, args.dir, args.url, args.force, not args.no_progress, args.timeout
        )
    except DownloadError as exc:
        print(f"edgesam: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
