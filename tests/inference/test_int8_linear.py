"""Dynamic int8 dense layers: the int_mm kernel equals the written-out integer reference,
both stay close to the float layers, and the layers trace, script and swap as export needs."""

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from torchrec_rankmixer.inference.dense import PerTokenLinearSwiGLU
from torchrec_rankmixer.inference.int8_linear import (
    Int8DynamicCrossNet,
    Int8DynamicLinear,
    WEIGHT_QMAX,
    int8_matmul,
    quantize_dense_int8,
    quantize_rows,
)
from torchrec_rankmixer.modules.interaction import LowRankCrossNet
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU


def _dequantized_linear(x: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """The layer's arithmetic written out in float64: quantize, multiply, rescale."""
    w = fc.weight.double()
    w_scale = w.abs().amax(1).clamp_min(1e-12) / 63  # 7-bit weight codes
    wq = torch.round(w / w_scale[:, None]).clamp(-63, 63)
    x2 = x.reshape(-1, x.shape[-1]).double()
    x_scale = x2.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
    xq = torch.round(x2 / x_scale).clamp(-127, 127)
    y = (xq @ wq.t()) * x_scale * w_scale + fc.bias.double()
    return y.reshape(*x.shape[:-1], -1)


def test_quantize_rows_round_trip_and_zero_rows():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -3.0]])
    q, scale = quantize_rows(x)
    assert q.dtype == torch.int8 and scale.shape == (3, 1)
    assert q.abs().amax(1).tolist() == [127, 0, 127]  # each non-zero row uses the full range
    assert torch.equal(q[1], torch.zeros(3, dtype=torch.int8))
    torch.testing.assert_close(q.float() * scale, x, atol=float(scale.max()) / 2, rtol=0)


@pytest.mark.parametrize("m,k,n", [(1, 7, 5), (33, 64, 24), (64, 576, 192)])
def test_int_mm_kernel_equals_reference(m, k, n):
    g = torch.Generator().manual_seed(m + k + n)
    q = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    w = torch.randint(-WEIGHT_QMAX, WEIGHT_QMAX + 1, (k, n), dtype=torch.int8, generator=g)  # the layers' codes
    assert torch.equal(int8_matmul(q, w), int8_matmul(q, w, "reference"))
    assert torch.equal(int8_matmul(q, w).long(), q.long() @ w.long())


def test_linear_matches_written_out_arithmetic_and_float():
    torch.manual_seed(0)
    fc = nn.Linear(48, 20)
    x = torch.randn(4, 6, 48)  # leading dims are kept
    fast, ref = Int8DynamicLinear.from_float(fc), Int8DynamicLinear.from_float(fc, kernel="reference")
    y = fast(x)
    assert y.shape == (4, 6, 20) and y.dtype == torch.float32
    assert torch.equal(y, ref(x))  # same integers, same rescale
    torch.testing.assert_close(y.double(), _dequantized_linear(x, fc), atol=1e-4, rtol=1e-4)
    err = (y - fc(x)).abs().max()
    assert 0 < err < 0.03 * fc(x).abs().max()


def test_linear_without_bias_and_bad_kernel():
    fc = nn.Linear(8, 3, bias=False)
    q8 = Int8DynamicLinear.from_float(fc)
    assert q8.bias is None and q8.weight_t.shape == (8, 3) and q8.weight_scale.shape == (3,)
    assert int(q8.weight_t.abs().max()) == WEIGHT_QMAX
    x = torch.randn(2, 8)
    assert (q8(x) - fc(x)).abs().max() < 0.05
    with pytest.raises(ValueError, match="kernel"):
        Int8DynamicLinear.from_float(fc, kernel="vnni")


def test_cross_net_matches_float_and_reference():
    torch.manual_seed(2)
    cross = LowRankCrossNet(24, num_layers=3, low_rank=8)
    with torch.no_grad():
        cross.bias.normal_()
    x0 = torch.randn(10, 24)
    fast, ref = Int8DynamicCrossNet(cross), Int8DynamicCrossNet(cross, kernel="reference")
    assert torch.equal(fast(x0), ref(x0))
    out = cross(x0)
    assert 0 < (fast(x0) - out).abs().max() < 0.05 * out.abs().max()


def test_quantize_dense_int8_swaps_every_matmul_layer():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        PerTokenSwiGLU(num_tokens=2, d_model=4, hidden_dim=6, down_init_scale=1.0),
        PerTokenFFN(2, 4, 2),
        LowRankCrossNet(8, 2, 3),
    )
    quantize_dense_int8(model)
    kinds = [type(m).__name__ for m in model.modules()]
    assert "Linear" not in kinds and "PerTokenSwiGLU" not in kinds and "PerTokenFFN" not in kinds
    assert isinstance(model[1], PerTokenLinearSwiGLU)
    assert all(isinstance(fc, Int8DynamicLinear) for fc in model[1].fc_in)
    assert isinstance(model[3], Int8DynamicCrossNet)


def test_layers_trace_export_and_script():
    torch.manual_seed(4)
    model = quantize_dense_int8(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))).eval()
    x = torch.randn(5, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=False)
    assert torch.equal(program.module()(x), model(x))
    assert torch.equal(program.module()(x[:1]), model(x[:1]))
    assert torch.equal(torch.jit.script(model)(x), model(x))
    cross = Int8DynamicCrossNet(LowRankCrossNet(8, 2, 3))
    assert torch.equal(torch.jit.script(cross)(x[:, :8]), cross(x[:, :8]))


def test_layers_trace_under_torch_fx():
    """TorchRec's FX tracer (the TorchScript artifact's first step) records the layers."""
    model = quantize_dense_int8(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), LowRankCrossNet(4, 1, 2)))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 5, 6)
    assert torch.equal(traced(x), model(x)) and model(x).shape == (3, 5, 4)


_NO_VNNI = """
import torch
from torch import nn
from torchrec_rankmixer.inference.int8_linear import Int8DynamicLinear
torch.manual_seed(0)
fc = nn.Linear(576, 192)
x = torch.randn(64, 576) * 3
fast, ref = Int8DynamicLinear.from_float(fc), Int8DynamicLinear.from_float(fc, kernel="reference")
assert torch.equal(fast(x), ref(x)), "int_mm differs from the integer reference"
print("exact")
"""


@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE"])
def test_exact_on_cpus_without_vnni(isa):
    """oneDNN's int8 GEMM without VNNI saturates int16 pair sums for 8-bit weights; the
    7-bit weight codes keep it exact (run in a process whose oneDNN is capped at ``isa``)."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", _NO_VNNI], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "exact", out.stderr[-2000:]
