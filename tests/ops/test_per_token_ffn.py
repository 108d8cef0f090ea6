"""The measured "auto" rule of ops/per_token_ffn.py and its parity with the loop; every
per-token FFN kernel, GELU (ops/per_token_ffn.py) and SwiGLU (ops/per_token_swiglu.py),
against the written-out equation and the reference loop, forward and backward."""

from dataclasses import dataclass
from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops.kernels import KERNELS
from torchrec_rankmixer.ops.per_token_ffn import choose_kernel, per_token_ffn, per_token_ffn_reference
from torchrec_rankmixer.ops.per_token_swiglu import per_token_swiglu, per_token_swiglu_reference


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


@dataclass(frozen=True)
class Kind:
    """One family of per-token FFN kernels, as the parity tests call it."""

    reference: Callable[..., torch.Tensor]
    kernels: Callable[..., torch.Tensor]  # the dispatcher, ``kernel=``
    shapes: Callable[[int, int, int], List[Tuple[int, ...]]]  # (T, D, h) -> the weights' shapes
    dtype: torch.dtype
    tol: float
    token: Callable[[torch.Tensor, List[torch.Tensor], int], torch.Tensor]  # token t's FFN, written out


def _swiglu_token(x: torch.Tensor, ws: List[torch.Tensor], t: int) -> torch.Tensor:
    w_in, w_out = ws
    h = w_out.shape[1]
    gate, up = x @ w_in[t, :, :h], x @ w_in[t, :, h:]
    return (gate * torch.sigmoid(gate) * up) @ w_out[t]  # SiLU(g) = g * sigmoid(g)


KINDS = {
    "gelu": Kind(per_token_ffn_reference, per_token_ffn, lambda T, D, h: [(T, D, h), (T, h), (T, h, D), (T, D)],
                 torch.float32, 1e-5, lambda x, ws, t: F.gelu(x @ ws[0][t] + ws[1][t]) @ ws[2][t] + ws[3][t]),
    "swiglu": Kind(per_token_swiglu_reference, per_token_swiglu, lambda T, D, h: [(T, D, 2 * h), (T, h, D)],
                   torch.float64, 1e-10, _swiglu_token),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


def _kind_args(kind: Kind, B: int = 5, T: int = 3, D: int = 8, h: int = 12):
    g = torch.Generator().manual_seed(B)
    shapes = [(B, T, D)] + kind.shapes(T, D, h)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(kind.dtype).requires_grad_() for s in shapes]


def test_reference_matches_written_out_equation(kind: Kind) -> None:
    x, *ws = _kind_args(kind)
    y = kind.reference(x, *ws)
    for t in range(x.shape[1]):
        torch.testing.assert_close(y[:, t], kind.token(x[:, t], ws, t))


@pytest.mark.parametrize("kernel", ["batched", "grouped_mm", "auto"])
@pytest.mark.parametrize("B", [1, 7, 130])
def test_kernels_match_reference_forward_and_backward(kind: Kind, kernel: str, B: int) -> None:
    ref_args = _kind_args(kind, B=B)
    fast_args = [a.detach().clone().requires_grad_() for a in ref_args]
    y_ref = kind.reference(*ref_args)
    y_fast = kind.kernels(*fast_args, kernel=kernel)
    torch.testing.assert_close(y_fast, y_ref, atol=kind.tol, rtol=kind.tol)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fast.backward(grad)
    for a, b in zip(ref_args, fast_args):
        torch.testing.assert_close(b.grad, a.grad, atol=kind.tol, rtol=kind.tol)
