"""The measured "auto" rule of ops/per_token_ffn.py and its parity with the loop."""

import pytest
import torch

from torchrec_rankmixer.ops.kernels import KERNELS
from torchrec_rankmixer.ops.per_token_ffn import choose_kernel, per_token_ffn


def _args(B: int, T: int = 3, D: int = 4, k: int = 2, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(B)
    shapes = ((B, T, D), (T, D, k * D), (T, k * D), (T, k * D, D), (T, D))
    return [torch.randn(*s, generator=g).to(dtype).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize("B", [1, 64, 512, 1024, 4096])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_auto_picks_the_measured_winner(B: int, grad: bool, dtype: torch.dtype) -> None:
    # docs/benchmarks.md: the loop wins only for fp32 CPU forward without autograd at
    # B >= 1024; bmm wins every training cell and every bf16 cell.
    x = torch.empty(B, 2, 4, dtype=dtype, requires_grad=grad)
    expected = "reference" if (dtype == torch.float32 and not grad and B >= 1024) else "batched"
    with torch.set_grad_enabled(grad):
        assert choose_kernel(x, "auto") == expected


def test_auto_is_bmm_under_fx_tracing() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return per_token_ffn(x, *_args(2)[1:], kernel="auto")

    gm = torch.fx.symbolic_trace(M())
    targets = {str(n.target) for n in gm.graph.nodes}
    assert any("baddbmm" in t for t in targets) and not any("addmm" == t.split(".")[-1] for t in targets)


def test_explicit_kernels_pass_through() -> None:
    x = torch.empty(4096, 2, 4)
    for kernel in KERNELS[1:]:
        assert choose_kernel(x, kernel) == kernel


@pytest.mark.parametrize("B", [1, 300])
def test_auto_matches_loop_forward_and_backward(B: int) -> None:
    with torch.no_grad():  # the inference path (loop at B >= 1024) agrees with bmm too
        big = _args(1024)
        torch.testing.assert_close(per_token_ffn(*big, kernel="auto"),
                                   per_token_ffn(*big, kernel="batched"), rtol=1e-5, atol=1e-5)
    args = _args(B)
    y_auto = per_token_ffn(*args, kernel="auto")
    y_loop = per_token_ffn(*args, kernel="reference")
    torch.testing.assert_close(y_auto, y_loop, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_auto)
    for a, b in zip(torch.autograd.grad(y_auto, args, g), torch.autograd.grad(y_loop, args, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_unknown_kernel_raises() -> None:
    with pytest.raises(ValueError, match="kernel \\('fused'\\)"):
        per_token_ffn(*_args(2), kernel="fused")
