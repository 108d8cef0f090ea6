"""PerTokenFFN and SharedFFN (modules/per_token_ffn.py); the kernels' parity with the
reference loop: tests/ops/test_per_token_ffn.py."""

import pytest
import torch

from torchrec_rankmixer import PerTokenFFN, SharedFFN
from torchrec_rankmixer.ops import per_token_ffn as ops


def _args(B: int = 5, T: int = 3, D: int = 8, k: int = 2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        for s in [(B, T, D), (T, D, k * D), (T, k * D), (T, k * D, D), (T, D)]
    ]


def test_auto_rule() -> None:
    """docs/benchmarks.md section 1: bmm everywhere except large-batch fp32 CPU inference."""
    small = torch.randn(8, 2, 4)
    big = torch.randn(ops.CPU_FP32_INFERENCE_LOOP_MIN_BATCH, 2, 4)
    assert ops.choose_kernel(small, "auto") == "batched"
    with torch.enable_grad():
        assert ops.choose_kernel(big, "auto") == "batched"  # training: bmm
    with torch.no_grad():
        assert ops.choose_kernel(big, "auto") == "reference"
        assert ops.choose_kernel(big.bfloat16(), "auto") == "batched"
        assert ops.choose_kernel(small, "auto") == "batched"
    assert ops.choose_kernel(big, "reference") == "reference"


def test_module_tokens_are_independent() -> None:
    torch.manual_seed(0)
    ffn = PerTokenFFN(num_tokens=4, d_model=8, ffn_mult=2)
    x = torch.randn(3, 4, 8)
    y = ffn(x)
    x2 = x.clone()
    x2[:, 1] += 1.0  # change token 1 only
    y2 = ffn(x2)
    changed = (y2 - y).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False, True, False, False]
    # each token has its own weights: same input on two tokens gives different outputs
    same = torch.randn(1, 1, 8).expand(1, 4, 8)
    out = ffn(same)
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_module_params_and_meta() -> None:
    ffn = PerTokenFFN(16, 32, 4)
    assert ffn.w1.shape == (16, 32, 128) and ffn.w2.shape == (16, 128, 32)
    meta = PerTokenFFN(16, 32, 4, device="meta")
    assert meta.w1.is_meta
    shared = SharedFFN(32, 4)
    assert sum(p.numel() for p in ffn.parameters()) == 16 * sum(p.numel() for p in shared.parameters())


def test_shared_ffn_applies_one_mlp_to_every_token() -> None:
    shared = SharedFFN(8, 2)
    same = torch.randn(1, 1, 8).expand(2, 5, 8)
    out = shared(same)
    assert torch.allclose(out[:, 0], out[:, 4])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_tokens=0, d_model=8), r"num_tokens \(0\)"),
        (dict(num_tokens=2, d_model=-8), r"d_model \(-8\)"),
        (dict(num_tokens=2, d_model=8, ffn_mult=0), r"ffn_mult \(0\)"),
        (dict(num_tokens=2, d_model=8, kernel="triton"), r"kernel \('triton'\)"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PerTokenFFN(**kwargs)


def test_dispatch_rejects_unknown_kernel() -> None:
    with pytest.raises(ValueError, match=r"kernel \('x'\)"):
        ops.per_token_ffn(*_args(), kernel="x")
