"""The fused Triton channel mixer (engine/triton_mixer.py), checked on the CPU through Triton's
interpreter. TRITON_INTERPRET must be set before Triton compiles the kernel's decorator, so the
checks run in a fresh interpreter process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def triton_major() -> int:
    """Triton's major version, 0 when it is not installed."""
    if importlib.util.find_spec("triton") is None:
        return 0
    from importlib.metadata import version

    return int(version("triton").split(".")[0])


pytestmark = pytest.mark.skipif(
    triton_major() < 3,
    reason="needs Triton >= 3.0, not installed here (CUDA builds of PyTorch >= 2.4 ship it; "
    "the dev extra installs it on Linux x86_64)",
)


def run_python(body: str, interpret: bool = True) -> dict:
    """Run `body` in a fresh interpreter, under TRITON_INTERPRET=1 unless `interpret` is False;
    it must set a dict `result`, returned through JSON."""
    script = "import json, torch\n" + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kernel_matches_the_unfused_mixer_for_each_stage_width_and_dtype() -> None:
    result = run_python(
        """
        import torch.nn.functional as F
        from engine.triton_mixer import repvit_mixer_rows

        torch.manual_seed(0)
        result = {}
        # Pixel counts that do not fill the last tile; the stage widths 48/96/192/384; a width
        # that is not a multiple of 16.
        for c, m in ((48, 100), (96, 33), (192, 70), (384, 5), (40, 64)):
            x = torch.randn(m, c) * 2
            w1 = torch.randn(c, 2 * c) / c**0.5
            b1 = torch.randn(2 * c) * 0.1
            w2 = torch.randn(2 * c, c) / (2 * c) ** 0.5
            b2 = torch.randn(c) * 0.1
            for dtype in (torch.float32, torch.float16):
                args = [t.to(dtype) for t in (x, w1, b1, w2, b2)]
                y = repvit_mixer_rows(*args)
                xf, w1f, b1f, w2f, b2f = (t.float() for t in args)
                hidden = F.gelu(xf @ w1f + b1f).to(dtype).float()
                ref = xf + hidden @ w2f + b2f
                assert y.dtype == dtype and y.shape == x.shape
                result[f"{c}/{m}/{dtype}"] = [
                    (y.float() - ref).abs().max().item(),
                    ref.abs().max().item(),
                ]
        """
    )
    for key, (diff, scale) in result.items():
        # fp32: IEEE products; fp16: about one half-precision ulp at the output's magnitude.
        tolerance = 1e-5 * scale if "float32" in key else 2e-3 * scale
        assert diff <= tolerance, (key, diff, scale)


def test_kernel_rejects_mismatched_inputs_with_clear_errors() -> None:
    result = run_python(
        """
        from engine.triton_mixer import repvit_mixer_rows as channel_mixer_rows

        x, w1, b1 = torch.zeros(8, 16), torch.zeros(16, 32), torch.zeros(32)
        w2, b2 = torch.zeros(32, 16), torch.zeros(16)
        result = {"empty": list(channel_mixer_rows(torch.zeros(0, 16), w1, b1, w2, b2).shape)}
        cases = {
            "dtype": (x.half(), w1, b1, w2, b2),
            "w1_shape": (x, torch.zeros(16, 31), b1, w2, b2),
            "b2_shape": (x, w1, b1, w2, torch.zeros(15)),
            "not_matrix": (x[None], w1, b1, w2, b2),
            "strided": (torch.zeros(16, 8).t(), torch.zeros(8, 32), b1, torch.zeros(32, 8),
                        torch.zeros(8)),
        }
        for name, args in cases.items():
            try:
                channel_mixer_rows(*args)
                result[name] = "no error"
            except ValueError as exc:
                result[name] = str(exc)
        """
    )
    assert result.pop("empty") == [0, 16]
    for name, message in result.items():
        assert message != "no error", name


def test_kernel_with_depthwise_conv_and_gate_matches_the_unfused_block() -> None:
    result = run_python(
        """
        import torch.nn.functional as F
        from engine.triton_mixer import repvit_mixer_rows

        torch.manual_seed(1)
        result = {}
        # Maps smaller than, equal to and not a multiple of a tile; one pixel wide; 2 images.
        for c, n, h, w in ((48, 2, 7, 9), (96, 1, 8, 4), (40, 2, 1, 5), (16, 3, 5, 1)):
            x = torch.randn(n, c, h, w)
            dw = torch.randn(c, 1, 3, 3) / 3
            dwb = torch.randn(c) * 0.1
            gate = torch.rand(n, c)
            w1 = torch.randn(c, 2 * c) / c**0.5
            b1 = torch.randn(2 * c) * 0.1
            w2 = torch.randn(2 * c, c) / (2 * c) ** 0.5
            b2 = torch.randn(c) * 0.1
            rows = x.permute(0, 2, 3, 1).reshape(-1, c).contiguous()
            for dtype in (torch.float32, torch.float16):
                cast = [t.to(dtype) for t in (rows, w1, b1, w2, b2)]
                dw_w = dw.reshape(c, 9).t().contiguous().to(dtype)
                for use_dw, use_gate in ((True, False), (False, True), (True, True)):
                    y = repvit_mixer_rows(
                        *cast,
                        dw_weight=dw_w if use_dw else None,
                        dw_bias=dwb.to(dtype) if use_dw else None,
                        gate=gate.to(dtype) if use_gate else None,
                        height=h,
                        width=w,
                    )
                    t = x.to(dtype).float()
                    if use_dw:
                        t = F.conv2d(t, dw.to(dtype).float(), dwb.to(dtype).float(), padding=1,
                                     groups=c).to(dtype).float()
                    if use_gate:
                        t = (t * gate.to(dtype).float()[:, :, None, None]).to(dtype).float()
                    t = t.permute(0, 2, 3, 1).reshape(-1, c)
                    w1f, b1f, w2f, b2f = (v.float() for v in cast[1:])
                    ref = t + F.gelu(t @ w1f + b1f).to(dtype).float() @ w2f + b2f
                    key = f"{c}/{n}x{h}x{w}/{dtype}/dw={use_dw}/gate={use_gate}"
                    result[key] = [(y.float() - ref).abs().max().item(), ref.abs().max().item()]
        """
    )
    assert len(result) == 24
    for key, (diff, scale) in result.items():
        tolerance = 1e-5 * scale if "float32" in key else 2e-3 * scale
        assert diff <= tolerance, (key, diff, scale)


def test_backend_with_triton_mixers_encodes_like_the_plain_backend(reference_dir: Path) -> None:
    weights = reference_dir / "case_a" / "weights.safetensors"
    result = run_python(
        f"""
        from engine import build_edge_sam
        from engine.backends.torch_backend import TorchBackend
        from engine.triton_mixer import TritonChannelMixer, use_triton_channel_mixers

        torch.manual_seed(0)
        model = build_edge_sam({str(weights)!r})
        plain = TorchBackend(model, "cpu", fingerprint="t")
        mixed = TorchBackend(model, "cpu", fingerprint="t", triton_mixer=True)
        swapped = sum(isinstance(m, TritonChannelMixer) for m in mixed._encoder.modules())
        mixers_only = TorchBackend(model, "cpu", fingerprint="t")
        mixer_counts = use_triton_channel_mixers(mixers_only._encoder, whole_blocks=False)
        all_counts = use_triton_channel_mixers(
            TorchBackend(model, "cpu", fingerprint="t")._encoder, max_channels=384
        )
        # A small input keeps the interpreter quick; every block still runs.
        x = torch.randn(2, 3, 64, 64)
        a, b, c = plain.encode(x), mixed.encode(x), mixers_only.encode(x)
        # torch.compile sees the kernel as one custom op: the whole encoder is one graph.
        graph = torch.compile(mixed._encoder, backend="aot_eager", fullgraph=True)
        with torch.inference_mode():
            xc = x.contiguous(memory_format=torch.channels_last)
            compiled_diff = (graph(xc) - mixed._encoder(xc)).abs().max().item()
        result = {{
            "mixer_counts": mixer_counts,
            "all_counts": all_counts,
            "mixers_only_diff": (a - c).abs().max().item(),
            "compiled_diff": compiled_diff,
            "swapped": swapped,
            "detail": mixed.info.details["triton_mixer"],
            "shape": list(b.shape),
            "diff": (a - b).abs().max().item(),
            "scale": a.abs().max().item(),
        }}
        """
    )
    # 23 of RepViT-m1's 26 blocks have at most 192 channels; the three 384-channel ones keep cuDNN.
    assert result["swapped"] == 23
    # 12 stride-1 blocks without squeeze-excite run whole; 9 with it take their gate; the two
    # stride-2 blocks up to 192 channels keep their token mixer.
    assert result["detail"] == (
        "23 channel mixers (12 with their depthwise conv, 9 with their squeeze-excite gate)"
    )
    assert result["mixer_counts"] == {"mixers": 23, "with_depthwise": 0, "with_gate": 0}
    assert result["all_counts"] == {"mixers": 26, "with_depthwise": 13, "with_gate": 10}
    assert result["mixers_only_diff"] <= 1e-4 * result["scale"], result
    assert result["shape"] == [2, 256, 4, 4]
    assert result["diff"] <= 1e-4 * result["scale"], result
    assert result["compiled_diff"] <= 1e-5 * result["scale"], result


def test_backend_refuses_the_triton_mixer_where_it_cannot_run() -> None:
    from engine.backends.torch_backend import TorchBackend
    from engine.modeling import EdgeSam

    model = EdgeSam()
    with pytest.raises(ValueError, match="CUDA"):
        TorchBackend(model, "cpu", fingerprint="t", triton_mixer=True)
    with pytest.raises(ValueError, match="optimize=True"):
        TorchBackend(model, "cpu", fingerprint="t", optimize=False, triton_mixer=True)


def test_kernel_compiles_for_hopper_ampere_and_orin_without_a_gpu() -> None:
    """The interpreter does not run Triton's compiler, whose rules are stricter (globals must
    be constexpr, dot shapes, shared memory): compile the CUDA path ahead of time, to cubin,
    for sm_90 (H100/H200), sm_80 (A100) and sm_87 (Jetson Orin), each tile the autotuner tries
    at the widest width, and each flag combination and dtype at one tile."""
    shared = run_python(
        """
        from engine.triton_mixer import _CUDA_CONFIGS, compile_for_gpu

        def shared_memory(*args):
            return compile_for_gpu(*args).metadata.shared

        result = {}
        for config in _CUDA_CONFIGS:
            result[f"90/192/fp16/dw/{config}"] = shared_memory(90, "fp16", 192, True, False, config)
        one = _CUDA_CONFIGS[1]
        for c in (48, 96, 384):
            for depthwise, gate in ((True, False), (False, True), (False, False)):
                key = f"90/{c}/fp16/{depthwise}/{gate}"
                result[key] = shared_memory(90, "fp16", c, depthwise, gate, one)
        for dtype in ("bf16", "fp32"):
            result[f"90/48/{dtype}"] = shared_memory(90, dtype, 48, True, False, one)
        result["80/96/fp16"] = shared_memory(80, "fp16", 96, True, False, one)
        result["87/96/fp16"] = shared_memory(87, "fp16", 96, False, True, one)
        """,
        interpret=False,
    )
    assert len(shared) == 8 + 9 + 2 + 2
    # Every kernel fits the shared memory of one Orin SM (164 KiB), the smallest of the three.
    assert max(shared.values()) <= 164 * 1024, shared
