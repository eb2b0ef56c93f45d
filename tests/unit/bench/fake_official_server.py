"""A stand-in for the official implementation behind bench/official.py's protocol: the real
server loop (`serve_main`), fixed timings instead of a model. Run as a script by
test_bench_official.py; needs numpy only.

FAKE_OFFICIAL_LOG: a file each timed measure is appended to (the order of the calls).
FAKE_OFFICIAL_DIE_AT: a measure at which the process exits without answering.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from bench.official import OfficialError, Session, serve_main  # noqa: E402

# set_image 50 ms, encode_bN 40*N, predict 8, predict_3 9, everything_N 1000*N
FIXED = {"set_image": 50.0, "predict": 8.0, "predict_3": 9.0}


class FakeSession(Session):
    def __init__(self, req: dict[str, Any]) -> None:
        import numpy as np

        super().__init__(req["clock"])
        print("noise a real model's build might print")  # must not reach the protocol
        image = np.load(req["image"])
        self.info.update(
            {
                "threads": req["threads"],
                "weights": req["weights"],
                "image_shape": list(image.shape),
                "image_sum": int(image.sum()),
                "point_coords": req["point_coords"],
                "point_labels": req["point_labels"],
                "omp": os.environ.get("OMP_NUM_THREADS"),
            }
        )

    def time(self, measure: str) -> dict[str, Any]:
        if measure == os.environ.get("FAKE_OFFICIAL_DIE_AT"):
            os._exit(3)
        log = os.environ.get("FAKE_OFFICIAL_LOG")
        if log:
            with open(log, "a") as f:
                f.write(measure + "\n")
        if measure in FIXED:
            return {"ms": FIXED[measure]}
        if measure.startswith("encode_b"):
            return {"ms": 40.0 * int(measure[len("encode_b") :])}
        if measure.startswith("everything_"):
            return {"ms": 1000.0 * int(measure[len("everything_") :]), "masks": 7}
        raise OfficialError(f"unknown measure {measure!r}")


if __name__ == "__main__":
    sys.exit(serve_main(FakeSession))
