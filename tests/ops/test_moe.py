"""Per-token MoE kernels (ops/moe.py): reference vs dense vs sparse, forward and backward."""

import pytest
import torch

from torchrec_rankmixer.ops.moe import (
    choose_sparse_kernel,
    group_active,
    moe_experts_dense,
    moe_experts_reference,
    moe_experts_sparse,
)

B, T, E, D, H = 6, 3, 4, 5, 7


def _weights(dtype: torch.dtype = torch.float64, grad: bool = False, d: int = D, h: int = H):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(T, E, d, h, generator=g), torch.randn(T, E, h, generator=g),
          torch.randn(T, E, h, d, generator=g), torch.randn(T, E, d, generator=g)]
    return [w.to(dtype).requires_grad_(grad) for w in ws]


def _inputs(dtype: torch.dtype = torch.float64, density: float = 0.5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, D, generator=g).to(dtype)
    gates = torch.rand(B, T, E, generator=g).to(dtype)
    gates = gates * (torch.rand(B, T, E, generator=g) < density).to(dtype)
    return x, gates


def test_dense_matches_reference_forward_and_backward() -> None:
    x, gates = _inputs()
    x.requires_grad_(True)
    gates.requires_grad_(True)
    grads = []
    for fn in (moe_experts_reference, moe_experts_dense):
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
    torch.testing.assert_close(
        moe_experts_sparse(x, gates, *ws, kernel=kernel), moe_experts_dense(x, gates, *ws),
        rtol=1e-12, atol=1e-12,
    )


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")
@pytest.mark.parametrize("d,h", [(8, 16), (D, H)])  # aligned: the op; unaligned: fallback
def test_sparse_grouped_mm_kernel_matches_float32(d: int, h: int) -> None:
    x, gates = _inputs(torch.float32)
    x = torch.randn(B, T, d)
    gates[:, 0] = 0.0  # some empty expert groups
    ws = _weights(torch.float32, d=d, h=h)
    torch.testing.assert_close(
        moe_experts_sparse(x, gates, *ws, kernel="grouped_mm"), moe_experts_dense(x, gates, *ws),
        rtol=1e-4, atol=1e-4,
    )


def test_sparse_backward_matches_dense() -> None:
    x, gates = _inputs()
    out = []
    for fn in (moe_experts_dense, moe_experts_sparse):
        ws = _weights(grad=True)
        fn(x, gates, *ws).square().sum().backward()
        out.append([w.grad for w in ws])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sparse_runs_only_active_experts() -> None:
    """Poison an inactive expert with NaN: the sparse path must never touch it."""
    x, gates = _inputs()
    gates[:, 1, 2] = 0.0
    ws = _weights()
    ws[0] = ws[0].clone()
    ws[0][1, 2] = float("nan")
    y = moe_experts_sparse(x, gates, *ws)
    assert torch.isfinite(y).all()
    assert torch.isnan(moe_experts_dense(x, gates, *ws)).any()  # dense computes it


def test_group_active_counts_and_order() -> None:
    _, gates = _inputs()
    group, row, gate, counts = group_active(gates)
    assert group.numel() == int((gates != 0).sum()) == int(counts.sum())
    assert torch.all(group[1:] >= group[:-1])
    b, t = row // T, row % T
    torch.testing.assert_close(gates[b, t, group % E], gate)
    assert torch.equal(t, group // E)


def test_bad_shapes_and_kernel_raise() -> None:
    x, gates = _inputs()
    ws = _weights()
    with pytest.raises(ValueError, match="shapes disagree"):
        moe_experts_dense(x, gates[:, :, :2], *ws)
    with pytest.raises(ValueError, match="must be 3-D"):
        moe_experts_sparse(x[0], gates, *ws)
    with pytest.raises(ValueError, match="w2"):
        moe_experts_reference(x, gates, ws[0], ws[1], ws[2][:, :, :2], ws[3])
    with pytest.raises(ValueError, match="kernel"):
        moe_experts_sparse(x, gates, *ws, kernel="cutlass")
    assert choose_sparse_kernel(x.float(), "auto") == "batched"
