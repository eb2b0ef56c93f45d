"""TensorRT backend logic that needs no GPU: cache keys, engine files, profiles, bindings."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.backends.base import BackendError, BackendUnavailable
from engine.backends.tensorrt_backend import (
    TensorRTBackend,
    onnx_input_specs,
    tensorrt_available,
)
from engine.backends.trt_logic import (
    EngineKey,
    ForeignEngineError,
    ProfileSpec,
    StaleEngineError,
    TensorSpec,
    build_profile,
    check_engine_key,
    check_feeds,
    dim_ranges,
    dtype_name,
    key_differences,
    needs_explicit_batch_flag,
    read_engine_file,
    split_batches,
    tensorrt_opset,
    tensorrt_release,
    unsupported_onnx_ops,
    weak_precision_refusal,
    write_engine_file,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def make_key(**changes: object) -> EngineKey:
    base = EngineKey(
        fingerprint="abc123",
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        precision="fp16",
        profiles={
            "encoder": {"image": [[1, 3, 1024, 1024], [4, 3, 1024, 1024], [8, 3, 1024, 1024]]}
        },
        onnx_digests={"encoder": "e1", "decoder": "d1"},
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "change",
    [
        {"fingerprint": "other"},
        {"tensorrt_version": "10.4.0"},
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": "8.9"},
        {"precision": "fp32"},
        {"profiles": {"encoder": {"image": [[1, 3, 1024, 1024]] * 3}}},
        {"onnx_digests": {"encoder": "e2", "decoder": "d1"}},
    ],
)
def test_every_key_field_changes_the_digest(change: dict) -> None:
    assert make_key().digest() != make_key(**change).digest()


def test_key_is_deterministic_and_names_the_file() -> None:
    assert make_key().digest() == make_key().digest()
    name = make_key().file_name("edge_sam_3x")
    assert name.startswith("edge_sam_3x-fp16-nvidia-h100-80gb-hbm3-sm90-trt10.3.0-")
    assert name.endswith(make_key().digest() + ".engine")


def test_engine_file_round_trip(tmp_path: Path) -> None:
    path = write_engine_file(
        tmp_path / "a.engine", make_key(), {"encoder": b"E" * 10, "decoder": b"DD"}
    )
    key, parts = read_engine_file(path)
    assert key == make_key()
    assert parts == {"encoder": b"E" * 10, "decoder": b"DD"}
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_foreign_and_damaged_files_are_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw.plan"
    raw.write_bytes(b"\x00" * 64)
    with pytest.raises(ForeignEngineError, match="not an EdgeSAM engine file"):
        read_engine_file(raw)
    good = write_engine_file(tmp_path / "g.engine", make_key(), {"encoder": b"E" * 100})
    cut = tmp_path / "cut.engine"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ForeignEngineError, match="damaged"):
        read_engine_file(cut)
    with pytest.raises(BackendError, match="not found"):
        read_engine_file(tmp_path / "missing.engine")


def test_stale_engine_is_refused_naming_the_difference() -> None:
    check_engine_key("x.engine", make_key(), make_key())
    with pytest.raises(StaleEngineError) as err:
        check_engine_key(
            "x.engine", make_key(), make_key(gpu_name="NVIDIA L4", tensorrt_version="10.4")
        )
    text = str(err.value)
    assert "gpu_name" in text and "NVIDIA L4" in text and "tensorrt_version" in text
    assert "rebuild" in text
    assert len(key_differences(make_key(), make_key(precision="fp32"))) == 1


def test_profiles_from_our_onnx_export(exported: dict) -> None:
    spec = ProfileSpec(max_batch=8, max_prompts=32, max_points=10, opt_points=3)
    enc = build_profile(onnx_input_specs(exported["encoder"]), dim_ranges("encoder", spec))
    assert enc == {"image": ((1, 3, 1024, 1024), (4, 3, 1024, 1024), (8, 3, 1024, 1024))}
    dec = build_profile(onnx_input_specs(exported["decoder"]), dim_ranges("decoder", spec))
    assert dec["point_coords"] == ((1, 1, 2), (1, 3, 2), (32, 10, 2))
    assert dec["point_labels"] == ((1, 1), (1, 3), (32, 10))
    assert dec["image_embeddings"] == ((1, 256, 64, 64), (1, 256, 64, 64), (32, 256, 64, 64))
    assert dec["mask_input"][2] == (32, 1, 256, 256)
    assert dec["has_mask_input"] == ((1,), (1,), (1,))


def test_profile_errors() -> None:
    inputs = [TensorSpec("x", (-1, 3)), TensorSpec("y", (2,))]
    with pytest.raises(ValueError, match="no profile range"):
        build_profile(inputs, {})
    with pytest.raises(ValueError, match="static"):
        build_profile(inputs, {"x": {0: (1, 1, 2)}, "y": {0: (1, 1, 2)}})
    with pytest.raises(ValueError, match="lacks"):
        build_profile(inputs, {"x": {0: (1, 1, 2)}, "z": {0: (1, 1, 1)}})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        build_profile(inputs, {"x": {0: (2, 1, 4)}})
    with pytest.raises(ValueError):
        ProfileSpec(max_batch=4, opt_batch=8)
    with pytest.raises(ValueError):
        dim_ranges("neck", ProfileSpec())


@pytest.mark.parametrize(("max_batch", "opt"), [(1, 1), (2, 1), (8, 4), (32, 16), (12, 4)])
def test_default_opt_batch(max_batch: int, opt: int) -> None:
    assert ProfileSpec(max_batch=max_batch).encoder_opt_batch == opt


def test_binding_checks() -> None:
    inputs = [TensorSpec("image", (-1, 3, 1024, 1024))]
    profile = {"image": ((1, 3, 1024, 1024), (2, 3, 1024, 1024), (4, 3, 1024, 1024))}
    assert check_feeds(inputs, {"image": (3, 3, 1024, 1024)}, profile) == ["image"]
    with pytest.raises(ValueError, match=r"outside the engine's profile \[1, 4\]"):
        check_feeds(inputs, {"image": (5, 3, 1024, 1024)}, profile)
    with pytest.raises(ValueError, match="axis 2"):
        check_feeds(inputs, {"image": (1, 3, 512, 1024)}, profile)
    with pytest.raises(ValueError, match="rank"):
        check_feeds(inputs, {"image": (1, 3, 1024)}, profile)
    with pytest.raises(ValueError, match="missing"):
        check_feeds(inputs, {}, profile)
    with pytest.raises(ValueError, match="unexpected"):
        check_feeds(inputs, {"image": (1, 3, 1024, 1024), "x": (1,)}, profile)


def test_split_batches_and_dtypes() -> None:
    assert split_batches(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert split_batches(0, 8) == []
    assert dtype_name("DataType.FLOAT") == "float32"
    assert dtype_name("DataType.HALF") == "float16"
    with pytest.raises(BackendError):
        dtype_name("DataType.FP8")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_backend_is_unavailable(exported: dict) -> None:
    assert tensorrt_available() is False
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        TensorRTBackend.from_path(exported["encoder"], device="cuda:0")
    with pytest.raises(BackendUnavailable):
        TensorRTBackend.from_path(exported["encoder"], device="cpu")


def test_official_onnx_is_refused_for_tensorrt(case_a_onnx_dir: Path) -> None:
    from engine.backends.tensorrt_backend import _read_onnx_pair

    with pytest.raises(BackendError, match="not one of our ONNX exports"):
        _read_onnx_pair(case_a_onnx_dir / "edge_sam_case_a_encoder.onnx", None)


# TensorRT 8.5 (JetPack 5) against 10.x: the version-dependent branches, without TensorRT.


def test_tensorrt_release_parses_versions() -> None:
    assert tensorrt_release("8.5.2.2") == (8, 5)
    assert tensorrt_release("10.3.0") == (10, 3)
    with pytest.raises(ValueError):
        tensorrt_release("unknown")


@pytest.mark.parametrize(
    "version,explicit_flag,opset,unsupported",
    [
        ("8.5.2.2", True, 16, ["LayerNormalization"]),  # JetPack 5.1.2
        ("8.6.1.6", True, 17, []),
        ("10.3.0", False, 17, []),  # JetPack 6.1
    ],
)
def test_what_each_tensorrt_needs(version, explicit_flag, opset, unsupported) -> None:  # noqa: ANN001
    assert needs_explicit_batch_flag(version) is explicit_flag
    assert tensorrt_opset(version, 17) == opset
    assert tensorrt_opset(version, 15) == 15  # never raised
    assert unsupported_onnx_ops(version, {"Conv", "LayerNormalization", "Einsum"}) == unsupported
    assert unsupported_onnx_ops(version, {"Conv", "Einsum"}) == []


def test_tensorrt_11_fp16_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorRT 11 removed BuilderFlag.FP16 (weak typing): fp16 builds are refused with what to
    do, before any ONNX is read or engine built; fp32, and fp16 on 10.x, are not refused."""
    import engine.backends.tensorrt_backend as trt_backend

    assert weak_precision_refusal("10.13.3.9", "fp16") is None
    assert weak_precision_refusal("11.4.0.106", "fp32") is None
    message = weak_precision_refusal("11.4.0.106", "fp16")
    assert message is not None and "tensorrt<11" in message and "fp32" in message
    identity = {"tensorrt_version": "11.4.0.106", "gpu_name": "H100", "compute_capability": "9.0"}
    monkeypatch.setattr(trt_backend, "runtime_identity", lambda index: identity)
    with pytest.raises(BackendUnavailable, match="strongly typed"):
        trt_backend.build_engines_for(tmp_path / "missing_encoder.onnx", precision="fp16")


class _FakeParser:
    def __init__(self, network: object, logger: object) -> None:
        pass

    def parse_from_file(self, path: str) -> bool:
        return False  # stops the build right after the network was created

    num_errors = 1

    def get_error(self, index: int) -> str:
        return "fake parser stops here"


def _fake_trt(version: str, created: list[int]) -> SimpleNamespace:
    """Just enough of `tensorrt` to reach the parser: records create_network's flags."""

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Builder:
        def __init__(self, logger: object) -> None:
            pass

        def create_network(self, flags: int) -> object:
            created.append(flags)
            return object()

    return SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=_FakeParser,
        NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0),
    )


def _onnx_with(tmp_path: Path, op_type: str, *inputs: str) -> Path:
    """A one-node ONNX file (1x4 float inputs)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    names = ["x", *inputs]
    graph = helper.make_graph(
        [helper.make_node(op_type, names, ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("version,flags", [("8.5.2.2", 1), ("10.3.0", 0)])
def test_network_is_explicit_batch_on_every_tensorrt(monkeypatch, tmp_path, version, flags) -> None:  # noqa: ANN001
    from engine.backends import tensorrt_backend

    created: list[int] = []
    monkeypatch.setattr(tensorrt_backend, "_import_trt", lambda: _fake_trt(version, created))
    with pytest.raises(BackendError, match="fake parser stops here"):
        tensorrt_backend.build_engine_bytes(_onnx_with(tmp_path, "Relu"), {}, "fp16")
    assert created == [flags]


def test_layer_norm_onnx_is_refused_before_building_on_tensorrt_8_5(monkeypatch, tmp_path) -> None:  # noqa: ANN001
    from engine.backends import tensorrt_backend

    created: list[int] = []
    monkeypatch.setattr(tensorrt_backend, "_import_trt", lambda: _fake_trt("8.5.2.2", created))
    path = _onnx_with(tmp_path, "LayerNormalization", "scale")
    with pytest.raises(BackendError, match="LayerNormalization.*--for-tensorrt"):
        tensorrt_backend.build_engine_bytes(path, {}, "fp16")
    assert created == []
    monkeypatch.setattr(tensorrt_backend, "_import_trt", lambda: _fake_trt("10.3.0", created))
    with pytest.raises(BackendError, match="fake parser stops here"):
        tensorrt_backend.build_engine_bytes(path, {}, "fp16")


@pytest.mark.parametrize("version,opset", [("8.5.2.2", 16), ("10.3.0", 17)])
def test_export_for_tensorrt_picks_the_opset_its_parser_reads(monkeypatch, version, opset) -> None:  # noqa: ANN001
    from engine.backends import tensorrt_backend
    from engine.export import __main__ as export_cli

    monkeypatch.setattr(
        tensorrt_backend, "_import_trt", lambda: SimpleNamespace(__version__=version)
    )
    assert export_cli._opset_for_tensorrt(17) == opset


def test_opset_16_decoder_has_no_layer_norm_and_the_same_numbers(tmp_path: Path) -> None:
    """What TensorRT 8.5 gets: layer norm as arithmetic, outputs as at opset 17."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from engine.export import DECODER_INPUTS, export_decoder
    from engine.modeling import EdgeSam

    torch.manual_seed(0)
    model = EdgeSam().eval()
    rng = np.random.default_rng(0)
    feeds = {
        "image_embeddings": rng.standard_normal((1, 256, 64, 64), dtype=np.float32),
        "point_coords": rng.uniform(0, 1024, (2, 3, 2)).astype(np.float32),
        "point_labels": np.array([[1, 0, -1], [2, 3, -1]], dtype=np.float32),
        "mask_input": np.zeros((2, 1, 256, 256), dtype=np.float32),
        "has_mask_input": np.zeros((1,), dtype=np.float32),
    }
    outs = {}
    for opset in (16, 17):
        path = tmp_path / f"decoder{opset}.onnx"
        export_decoder(model, path, opset)
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        assert ("LayerNormalization" in ops) is (opset == 17)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[opset] = session.run(None, {k: feeds[k] for k in DECODER_INPUTS})
    for a, b in zip(outs[16], outs[17]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_pixels_cross_to_the_device_as_uint8_and_are_normalised_there(monkeypatch) -> None:  # noqa: ANN001
    """No TensorRT needed: the backend's encode_pixels with a recording encoder runner."""
    import torch

    import engine.backends.tensorrt_backend as trt_backend
    from engine.backends.base import Backend
    from engine.transforms import normalize_pixels

    seen_dtypes: list[torch.dtype] = []

    def spy(pixels, sizes, dtype=torch.float32):  # noqa: ANN001, ANN202
        seen_dtypes.append(pixels.dtype)
        return normalize_pixels(pixels, sizes, dtype)

    class Runner:
        def __init__(self) -> None:
            self.feeds: list[torch.Tensor] = []

        def run(self, feeds):  # noqa: ANN001, ANN202
            self.feeds.append(feeds["image"])
            return {"image_embeddings": feeds["image"].mean(dim=(2, 3), keepdim=True)}

    backend = object.__new__(trt_backend.TensorRTBackend)
    backend.device, backend.max_batch, backend._enc = torch.device("cpu"), 2, Runner()
    monkeypatch.setattr(trt_backend, "normalize_pixels", spy)
    pixels = torch.randint(0, 256, (3, 3, 1024, 1024), dtype=torch.uint8)
    sizes = [(1024, 700), (512, 1024), (1024, 1024)]
    got = backend.encode_pixels(pixels, sizes)
    assert seen_dtypes == [torch.uint8]  # the uint8 pixels were what the device got
    want = Backend.encode_pixels(backend, pixels, sizes)  # normalised on the host
    assert torch.equal(got, want)
    assert [f.shape[0] for f in backend._enc.feeds] == [2, 1, 2, 1]  # max_batch splits
