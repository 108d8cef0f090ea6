"""SwiGLU expert kernels (ops/moe_swiglu.py): reference vs dense vs sparse, forward and backward."""

import pytest
import torch

from torchrec_rankmixer.ops.moe_swiglu import (
    swiglu_experts,
    swiglu_experts_dense,
    swiglu_experts_reference,
    swiglu_experts_sparse,
    swiglu_experts_sparse_resolved,
)
from torchrec_rankmixer.ops.per_token_swiglu import swiglu

B, T, E, D, H = 6, 3, 4, 5, 7


def _weights(dtype: torch.dtype = torch.float64, grad: bool = False, d: int = D, h: int = H):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(T, E, d, 2 * h, generator=g), torch.randn(T, E, h, d, generator=g)]
    return [w.to(dtype).requires_grad_(grad) for w in ws]


def _inputs(dtype: torch.dtype = torch.float64, density: float = 0.5, d: int = D):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, d, generator=g).to(dtype)
    gates = torch.rand(B, T, E, generator=g).to(dtype)
    return x, gates * (torch.rand(B, T, E, generator=g) < density).to(dtype)


def test_reference_is_the_written_out_sum() -> None:
    x, gates = _inputs()
    w_in, w_out = _weights()
    y = swiglu_experts_reference(x, gates, w_in, w_out)
    b, t = 2, 1
    expected = sum(gates[b, t, e] * (swiglu(x[b, t] @ w_in[t, e]) @ w_out[t, e]) for e in range(E))
    torch.testing.assert_close(y[b, t], expected)


def test_dense_matches_reference_forward_and_backward() -> None:
    x, gates = _inputs()
    x.requires_grad_(True)
    gates.requires_grad_(True)
    grads = []
    for fn in (swiglu_experts_reference, swiglu_experts_dense):
        ws = _weights(grad=True)
        y = fn(x, gates, *ws)
        (y * torch.linspace(-1, 1, D, dtype=y.dtype)).sum().backward()
        grads.append([y.detach(), x.grad.clone(), gates.grad.clone()] + [w.grad for w in ws])
        x.grad, gates.grad = None, None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["batched", "reference", "auto"])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_sparse_equals_dense_with_same_gates(kernel: str, density: float) -> None:
    x, gates = _inputs(density=density)
    ws = _weights()
    torch.testing.assert_close(swiglu_experts_sparse(x, gates, *ws, kernel=kernel),
                               swiglu_experts_dense(x, gates, *ws), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")
@pytest.mark.parametrize("d,h", [(8, 16), (D, H)])  # aligned: the op; unaligned: fallback
def test_sparse_grouped_mm_kernel_matches_float32(d: int, h: int) -> None:
    x, gates = _inputs(torch.float32, d=d)
    gates[:, 0] = 0.0  # some empty expert groups
    ws = _weights(torch.float32, d=d, h=h)
    torch.testing.assert_close(swiglu_experts_sparse(x, gates, *ws, kernel="grouped_mm"),
                               swiglu_experts_dense(x, gates, *ws), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["batched", "reference"])
def test_sparse_backward_matches_dense(kernel: str) -> None:
    x, gates = _inputs()
    out = []
    for sparse in (False, True):
        ws = _weights(grad=True)
        swiglu_experts(x, gates, *ws, sparse=sparse, kernel=kernel).square().sum().backward()
        out.append([w.grad for w in ws])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sparse_runs_only_active_experts() -> None:
    """Poison an inactive expert with NaN: the sparse path must never touch it."""
    x, gates = _inputs()
    gates[:, 1, 2] = 0.0
    w_in, w_out = _weights()
    w_in[1, 2] = float("nan")
    assert torch.isfinite(swiglu_experts_sparse(x, gates, w_in, w_out)).all()
    assert torch.isnan(swiglu_experts_dense(x, gates, w_in, w_out)).any()  # dense computes it


def test_resolved_kernel_scripts() -> None:
    x, gates = _inputs(torch.float32)
    ws = _weights(torch.float32)
    scripted = torch.jit.script(swiglu_experts_sparse_resolved)
    for kernel in ("batched", "reference"):
        torch.testing.assert_close(scripted(x, gates, *ws, kernel), swiglu_experts_dense(x, gates, *ws),
                                   rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_kernel_raise() -> None:
    x, gates = _inputs()
    w_in, w_out = _weights()
    with pytest.raises(ValueError, match="shapes disagree"):
        swiglu_experts_dense(x, gates[:, :, :2], w_in, w_out)
    with pytest.raises(ValueError, match="must be 3-D"):
        swiglu_experts_sparse(x[0], gates, w_in, w_out)
    with pytest.raises(ValueError, match="w2"):
        swiglu_experts_reference(x, gates, w_in, w_out[:, :, :2])
    with pytest.raises(ValueError, match="kernel"):
        swiglu_experts(x, gates, w_in, w_out, sparse=False, kernel="cutlass")
