"""Dense transforms: unfused per-token FFN equals the fused one; kernel pinning."""

import torch
from torch import nn

from torchrec_rankmixer.inference.dense import (
    PerTokenLinearFFN,
    pin_traceable_kernels,
    unfuse_per_token_ffns,
)
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN


def test_per_token_linear_matches_fused():
    torch.manual_seed(0)
    ffn = PerTokenFFN(num_tokens=4, d_model=8, ffn_mult=3, kernel="reference")
    x = torch.randn(7, 4, 8)
    torch.testing.assert_close(PerTokenLinearFFN(ffn)(x), ffn(x), atol=1e-6, rtol=1e-5)


def test_unfuse_recurses_and_counts():
    model = nn.Sequential(nn.Sequential(PerTokenFFN(2, 4, 2)), PerTokenFFN(2, 4, 2), nn.ReLU())
    assert unfuse_per_token_ffns(model) == 2
    assert isinstance(model[0][0], PerTokenLinearFFN) and isinstance(model[1], PerTokenLinearFFN)


def test_pin_traceable_kernels_only_touches_auto():
    auto, loop = PerTokenFFN(2, 4, 2, kernel="auto"), PerTokenFFN(2, 4, 2, kernel="reference")
    pin_traceable_kernels(nn.Sequential(auto, loop))
    assert (auto.kernel, loop.kernel) == ("batched", "reference")
    moe_auto = PerTokenSparseMoE(num_tokens=2, d_model=4, num_experts=2, expert_hidden=4)
    moe_loop = PerTokenSparseMoE(num_tokens=2, d_model=4, num_experts=2, expert_hidden=4)
    moe_loop.configure_inference(sparse_kernel="reference")
    pin_traceable_kernels(nn.Sequential(moe_auto, moe_loop))
    assert (moe_auto.sparse_kernel, moe_loop.sparse_kernel) == ("batched", "reference")


def test_per_token_linear_swiglu_matches_fused_and_unfuses():
    from torchrec_rankmixer.inference.dense import PerTokenLinearSwiGLU
    from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU

    torch.manual_seed(0)
    ffn = PerTokenSwiGLU(num_tokens=4, d_model=8, hidden_dim=12, down_init_scale=1.0, kernel="reference")
    x = torch.randn(7, 4, 8)
    torch.testing.assert_close(PerTokenLinearSwiGLU(ffn)(x), ffn(x), atol=1e-6, rtol=1e-5)
    model = nn.Sequential(nn.Sequential(ffn), PerTokenFFN(2, 4, 2))
    assert unfuse_per_token_ffns(model) == 2
    assert isinstance(model[0][0], PerTokenLinearSwiGLU) and isinstance(model[1], PerTokenLinearFFN)
    assert all(fc.bias is None for fc in model[0][0].fc_in)
