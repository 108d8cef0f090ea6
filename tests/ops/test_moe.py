"""Per-token MoE kernels, GELU experts (ops/moe.py) and SwiGLU experts (ops/moe_swiglu.py),
through one harness: reference vs dense vs sparse, forward and backward."""

from dataclasses import dataclass
from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops import moe, moe_swiglu
from torchrec_rankmixer.ops.per_token_swiglu import swiglu

B, T, E, D, H = 6, 3, 4, 5, 7


@dataclass(frozen=True)
class Kind:
    """One family of expert kernels, as the tests call it."""

    reference: Callable[..., torch.Tensor]
    dense: Callable[..., torch.Tensor]
    sparse: Callable[..., torch.Tensor]
    resolved: Callable[..., torch.Tensor]  # the scriptable sparse body
    experts: Callable[..., torch.Tensor]  # the dispatcher
    shapes: Callable[[int, int], List[Tuple[int, ...]]]  # (d, h) -> the weights' shapes
    w2: int  # which weight is the down projection [T, E, h, D]
    expert: Callable[[torch.Tensor, List[torch.Tensor], int, int], torch.Tensor]  # written out


KINDS = {
    "gelu": Kind(
        moe.moe_experts_reference, moe.moe_experts_dense, moe.moe_experts_sparse,
        moe.moe_experts_sparse_resolved, moe.moe_experts,
        lambda d, h: [(T, E, d, h), (T, E, h), (T, E, h, d), (T, E, d)], 2,
        lambda x, ws, t, e: F.gelu(x @ ws[0][t, e] + ws[1][t, e]) @ ws[2][t, e] + ws[3][t, e],
    ),
    "swiglu": Kind(
        moe_swiglu.swiglu_experts_reference, moe_swiglu.swiglu_experts_dense, moe_swiglu.swiglu_experts_sparse,
        moe_swiglu.swiglu_experts_sparse_resolved, moe_swiglu.swiglu_experts,
        lambda d, h: [(T, E, d, 2 * h), (T, E, h, d)], 1,
        lambda x, ws, t, e: swiglu(x @ ws[0][t, e]) @ ws[1][t, e],
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> Kind:
    return KINDS[request.param]


def _weights(kind: Kind, dtype: torch.dtype = torch.float64, grad: bool = False, d: int = D, h: int = H):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*s, generator=g).to(dtype).requires_grad_(grad) for s in kind.shapes(d, h)]


def _inputs(dtype: torch.dtype = torch.float64, density: float = 0.5, d: int = D):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, d, generator=g).to(dtype)
    gates = torch.rand(B, T, E, generator=g).to(dtype)
    return x, gates * (torch.rand(B, T, E, generator=g) < density).to(dtype)


def test_reference_is_the_written_out_sum(kind: Kind) -> None:
    x, gates = _inputs()
    ws = _weights(kind)
    y = kind.reference(x, gates, *ws)
    b, t = 2, 1
    expected = sum(gates[b, t, e] * kind.expert(x[b, t], ws, t, e) for e in range(E))
    torch.testing.assert_close(y[b, t], expected)


def test_dense_matches_reference_forward_and_backward(kind: Kind) -> None:
    x, gates = _inputs()
    x.requires_grad_(True)
    gates.requires_grad_(True)
    grads = []
    for fn in (kind.reference, kind.dense):
        ws = _weights(kind, grad=True)
        y = fn(x, gates, *ws)
        (y * torch.linspace(-1, 1, D, dtype=y.dtype)).sum().backward()
        grads.append([y.detach(), x.grad.clone(), gates.grad.clone()] + [w.grad for w in ws])
        x.grad, gates.grad = None, None
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", ["batched", "reference", "auto"])
@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_sparse_equals_dense_with_same_gates(kind: Kind, kernel: str, density: float) -> None:
    x, gates = _inputs(density=density)
    ws = _weights(kind)
    torch.testing.assert_close(kind.sparse(x, gates, *ws, kernel=kernel), kind.dense(x, gates, *ws),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")
@pytest.mark.parametrize("d,h", [(8, 16), (D, H)])  # aligned: the op; unaligned: fallback
def test_sparse_grouped_mm_kernel_matches_float32(kind: Kind, d: int, h: int) -> None:
    x, gates = _inputs(torch.float32, d=d)
    gates[:, 0] = 0.0  # some empty expert groups
    ws = _weights(kind, torch.float32, d=d, h=h)
    torch.testing.assert_close(kind.sparse(x, gates, *ws, kernel="grouped_mm"), kind.dense(x, gates, *ws),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", ["auto", "batched", "reference"])
def test_sparse_backward_matches_dense(kind: Kind, kernel: str) -> None:
    """Through the dispatcher: dense execution (the loop for ``"reference"``) vs sparse."""
    x, gates = _inputs()
    out = []
    for sparse in (False, True):
        ws = _weights(kind, grad=True)
        kind.experts(x, gates, *ws, sparse=sparse, kernel=kernel).square().sum().backward()
        out.append([w.grad for w in ws])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_sparse_runs_only_active_experts(kind: Kind) -> None:
    """Poison an inactive expert with NaN: the sparse path must never touch it."""
    x, gates = _inputs()
    gates[:, 1, 2] = 0.0
    ws = _weights(kind)
    ws[0][1, 2] = float("nan")
    assert torch.isfinite(kind.sparse(x, gates, *ws)).all()
    assert torch.isnan(kind.dense(x, gates, *ws)).any()  # dense computes it


def test_resolved_kernel_scripts(kind: Kind) -> None:
    x, gates = _inputs(torch.float32)
    ws = _weights(kind, torch.float32)
    scripted = torch.jit.script(kind.resolved)
    for kernel in ("batched", "reference"):
        torch.testing.assert_close(scripted(x, gates, *ws, kernel), kind.dense(x, gates, *ws),
                                   rtol=1e-5, atol=1e-5)


def test_bad_shapes_and_kernel_raise(kind: Kind) -> None:
    x, gates = _inputs()
    ws = _weights(kind)
    with pytest.raises(ValueError, match="shapes disagree"):
        kind.dense(x, gates[:, :, :2], *ws)
    with pytest.raises(ValueError, match="must be 3-D"):
        kind.sparse(x[0], gates, *ws)
    short = [w[:, :, :2] if i == kind.w2 else w for i, w in enumerate(ws)]
    with pytest.raises(ValueError, match="w2"):
        kind.reference(x, gates, *short)
    with pytest.raises(ValueError, match="kernel"):
        kind.sparse(x, gates, *ws, kernel="cutlass")
    with pytest.raises(ValueError, match="kernel"):
        kind.experts(x, gates, *ws, sparse=False, kernel="cutlass")


def test_group_active_counts_and_order() -> None:
    _, gates = _inputs()
    group, row, gate, counts = moe.group_active(gates)
    assert group.numel() == int((gates != 0).sum()) == int(counts.sum())
    assert torch.all(group[1:] >= group[:-1])
    b, t = row // T, row % T
    torch.testing.assert_close(gates[b, t, group % E], gate)
    assert torch.equal(t, group // E)


def test_auto_sparse_kernel_on_cpu_is_batched() -> None:
    x, _ = _inputs()
    assert moe.choose_sparse_kernel(x.float(), "auto") == "batched"
