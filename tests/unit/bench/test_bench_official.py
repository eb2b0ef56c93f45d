"""bench/official.py's protocol and bench/encoder.py's same-run "vs official" figures, against a
fake official process (tests/unit/bench/fake_official_server.py: the real server loop, fixed
timings), so neither the official code nor its scratch venv is needed."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import encoder
from bench.official import OfficialError, OfficialProcess, Session
from tests.fake_backend import FakeBackend

FAKE = Path(__file__).resolve().parent / "fake_official_server.py"
POINT = {"point_coords": np.array([[200.0, 300.0]]), "point_labels": np.array([1])}


def fake_official(image: np.ndarray | None = None, **kwargs: object) -> OfficialProcess:
    kwargs = {"threads": 1, "clock": "process", **POINT, **kwargs}
    if image is None:
        image = np.full((4, 6, 3), 2, np.uint8)
    return OfficialProcess(None, image=image, command=[sys.executable, str(FAKE)], **kwargs)


def test_protocol_round_trip() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    with fake_official(image, weights="w.safetensors", threads=3, clock="wall") as off:
        info = off.info
        assert info["clock"] == "wall"
        assert info["threads"] == 3 and info["omp"] == "3"
        assert info["weights"] == "w.safetensors"
        assert info["image_shape"] == [5, 7, 3] and info["image_sum"] == int(image.sum())
        assert info["point_coords"] == [[200.0, 300.0]] and info["point_labels"] == [1]
        # the setup's print went to stderr, not into the replies
        assert off.time("set_image") == 50.0
        assert off.time("encode_b2") == 80.0
        assert off.time("everything_8") == 8000.0
        assert off.extra["everything_8"] == {"masks": 7}
        with pytest.raises(OfficialError, match="unknown measure 'bogus'"):
            off.time("bogus")
        assert off.time("predict") == 8.0  # still serving after an error
    assert off.proc.returncode == 0


def test_dead_process_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OFFICIAL_DIE_AT", "predict")
    with fake_official() as off:
        assert off.time("set_image") == 50.0
        with pytest.raises(OfficialError, match=r"exited \(3\)"):
            off.time("predict")


def test_session_times_with_its_clock_and_builds_jobs_once() -> None:
    built = []

    class Counting(Session):
        def job(self, measure: str):  # noqa: ANN202
            built.append(measure)
            return lambda: [1, 2, 3]

    session = Counting("process")
    assert session.clock.__name__ == "process_time"
    first, second = session.time("everything_4"), session.time("everything_4")
    assert built == ["everything_4"]
    assert first["masks"] == second["masks"] == 3 and first["ms"] >= 0
    assert "masks" not in session.time("set_image")
    with pytest.raises(ValueError):
        Counting("cpu")


def test_interleave_is_round_robin_with_a_warm_call() -> None:
    calls: list[str] = []
    values = {"a": iter([999.0, 1.0, 3.0, 2.0]), "b": iter([999.0, 10.0, 30.0, 20.0])}

    def job(name: str) -> float:
        calls.append(name)
        return next(values[name])

    medians = encoder.interleave({n: functools.partial(job, n) for n in "ab"}, runs=3)
    assert calls == ["a", "b"] * 4
    assert medians == {"a": 2.0, "b": 20.0}  # the warm call (999) is not counted


def test_official_reference_prefers_this_run() -> None:
    stored = {"set_image": 785.0, "encoder": 706.0}
    assert encoder.official_reference("set_image", {"set_image": 50.0}, stored) == (50.0, "run")
    assert encoder.official_reference("set_image", None, stored) == (785.0, "stored")
    assert encoder.official_reference("encode_b1", {}, stored) == (706.0, "stored")
    assert encoder.official_reference("encode_b2", None, stored) == (None, "")


def test_run_measures_times_the_official_in_the_same_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_OFFICIAL_LOG", str(log))
    monkeypatch.setattr(encoder, "CLOCK", encoder.time.perf_counter)
    args = encoder.argparse.Namespace(batch_sizes=[1], runs=2, everything=2, everything_runs=2)
    backends = {"torch-eager": FakeBackend(), "onnxruntime": FakeBackend()}
    photo = np.zeros((64, 48, 3), np.uint8)
    with fake_official(photo) as off:
        results = encoder.run_measures(args, list(backends), backends, photo, POINT, off)
    labels = ["encode_b1", "set_image", "predict", "predict_3", "everything_2"]
    assert list(results) == ["torch-eager", "onnxruntime", "official"]
    assert results["official"] == {
        "encode_b1": 40.0,
        "set_image": 50.0,
        "predict": 8.0,
        "predict_3": 9.0,
        "everything_2": 2000.0,
    }
    assert all(list(results[n]) == labels for n in backends)
    # one warm call and 2 rounds per measure, each in the rounds with our backends
    assert log.read_text().split() == [m for m in labels for _ in range(3)]


def test_report_divides_by_the_same_run_official(capsys: pytest.CaptureFixture[str]) -> None:
    results = {
        "torch-eager": {"set_image": 100.0, "encode_b1": 90.0, "encode_b2": 180.0},
        "official": {"set_image": 50.0, "encode_b1": 45.0},
    }
    args = encoder.argparse.Namespace(json=None)
    encoder.report(args, ["torch-eager"], results, dict(encoder.OFFICIAL_MS), None)
    rows = {tuple(line.split()[:2]): line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows[("torch-eager", "set_image")][-1] == "2.00x"  # 100 / 50, not 100 / 785
    assert rows[("torch-eager", "encode_b1")][-1] == "2.00x"  # 90 / 45, not 90 / 706
    assert rows[("official", "set_image")][-2:] == ["0.50x", "1.00x"]
    # no official figure for batch 2 in this run nor stored: no ratio
    assert rows[("torch-eager", "encode_b2")] == [
        "torch-eager",
        "encode_b2",
        "180.0",
        "11.11",
        "1.00x",
    ]


def test_report_without_official_says_stored(capsys: pytest.CaptureFixture[str]) -> None:
    results = {"torch-eager": {"set_image": 785.0}}
    encoder.report(
        encoder.argparse.Namespace(json=None), ["torch-eager"], results, {"set_image": 392.5}, None
    )
    out = capsys.readouterr().out
    assert "stored figures, not this run" in out
    assert [line.split()[-1] for line in out.splitlines() if "set_image" in line][-1] == "2.00x"


def test_main_with_official_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venv"
    started: list[object] = []

    def official_process(python: object, **kwargs: object) -> OfficialProcess:
        started.append(python)
        return fake_official(**kwargs)

    monkeypatch.setattr(encoder, "make_backend", lambda *a, **k: FakeBackend())
    monkeypatch.setattr(encoder, "OfficialProcess", official_process)
    out = tmp_path / "bench.json"
    weights = tmp_path / "w.safetensors"
    argv = ["--backend", "onnxruntime", "--batch-sizes", "1", "--runs", "1"]
    argv += ["--threads", "1", "--weights", str(weights), "--json", str(out)]
    assert encoder.main([*argv, "--official-venv", str(venv)]) == 0
    assert started == [venv / "bin" / "python"]
    data = json.loads(out.read_text())
    assert data["vs_official_source"] == "same run"
    assert data["official_same_run_ms"]["set_image"] == 50.0
    assert data["results_ms"]["official"] == data["official_same_run_ms"]
    assert data["official_info"]["weights"] == str(weights)
    ours = data["results_ms"]["onnxruntime"]["set_image"]
    assert data["vs_official"]["onnxruntime"]["set_image"] == pytest.approx(ours / 50.0)
