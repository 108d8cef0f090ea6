"""pSwiGLU kernels (ops/per_token_swiglu.py): the auto rule, FX tracing, the grouped_mm
fallback and errors. Every kernel against the written-out equation and the reference loop,
forward and backward: tests/ops/test_per_token_ffn.py, with the GELU kernels."""

import pytest
import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops.per_token_swiglu import (
    per_token_swiglu,
    per_token_swiglu_grouped_mm,
    per_token_swiglu_reference,
)


def _args(B: int = 5, T: int = 3, D: int = 8, h: int = 12, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(B)
    shapes = ((B, T, D), (T, D, 2 * h), (T, h, D))
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def test_inference_auto_path_matches_batched() -> None:
    """``auto`` runs the loop for large fp32 inference batches (ops/per_token_ffn.py's rule)."""
    args = [a.detach() for a in _args(B=1024, dtype=torch.float32)]
    with torch.no_grad():
        torch.testing.assert_close(per_token_swiglu(*args, kernel="auto"),
                                   per_token_swiglu(*args, kernel="batched"), atol=1e-4, rtol=1e-4)


def test_grouped_mm_falls_back_on_cpu_float() -> None:
    args = _args()
    torch.testing.assert_close(per_token_swiglu_grouped_mm(*args), per_token_swiglu_reference(*args))


def test_auto_is_batched_under_fx_tracing() -> None:
    w_in, w_out = _args()[1:]

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return per_token_swiglu(x, w_in, w_out, kernel="auto")

    targets = [str(n.target) for n in torch.fx.symbolic_trace(M()).graph.nodes]
    assert sum("bmm" in t for t in targets) == 2 and not any(t.endswith("stack") for t in targets)


def test_unknown_kernel_raises() -> None:
    with pytest.raises(ValueError, match=r"kernel \('fused'\)"):
        per_token_swiglu(*_args(), kernel="fused")


def test_silu_is_torch_silu() -> None:
    a = torch.randn(4, 6, dtype=torch.float64)
    from torchrec_rankmixer.ops.per_token_swiglu import swiglu

    torch.testing.assert_close(swiglu(a), F.silu(a[:, :3]) * a[:, 3:])
