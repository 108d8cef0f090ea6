import pytest
import torch

from torchrec_rankmixer import MultiHeadTokenMixing
from torchrec_rankmixer.ops.token_mixing import token_mixing_batched, token_mixing_reference


def literal(x: torch.Tensor, H: int) -> torch.Tensor:
    """Element by element: out[b, h, t*dh + j] = x[b, t, h*dh + j]."""
    B, T, D = x.shape
    dh = D // H
    out = torch.empty(B, H, T * dh)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                for j in range(dh):
                    out[b, h, t * dh + j] = x[b, t, h * dh + j]
    return out


@pytest.mark.parametrize("T, D, H", [(4, 8, 4), (3, 6, 3), (4, 8, 2), (2, 8, 8), (5, 10, 1)])
def test_fast_and_reference_match_the_equation(T: int, D: int, H: int) -> None:
    x = torch.randn(2, T, D)
    expected = literal(x, H)
    assert torch.equal(token_mixing_reference(x, H), expected)
    assert torch.equal(token_mixing_batched(x, H), expected)
    mix = MultiHeadTokenMixing(T, D, H)
    assert torch.equal(mix(x), expected)
    assert mix(x).shape == (2, *mix.out_shape)


def test_strict_keeps_shape_and_is_a_permutation() -> None:
    x = torch.randn(3, 16, 64)
    y = MultiHeadTokenMixing(num_tokens=16, d_model=64)(x)
    assert y.shape == x.shape
    # every element appears exactly once: a pure permutation
    assert torch.equal(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    # applying the mixing twice with H = T returns the input (it is a transpose)
    assert torch.equal(MultiHeadTokenMixing(16, 64)(y), x)


def test_permutation_index_is_bijective() -> None:
    T, D, H = 4, 12, 3
    idx = torch.arange(T * D, dtype=torch.float32).reshape(1, T, D)
    perm = MultiHeadTokenMixing(T, D, H)(idx).flatten().long()
    assert torch.equal(perm.sort().values, torch.arange(T * D))


def test_no_parameters_and_gradients_flow() -> None:
    mix = MultiHeadTokenMixing(4, 8)
    assert list(mix.parameters()) == []
    x = torch.randn(2, 4, 8, requires_grad=True)
    g = torch.randn(2, 4, 8)
    mix(x).backward(g)
    x2 = x.detach().clone().requires_grad_()
    token_mixing_reference(x2, 4).backward(g)
    assert torch.equal(x.grad, x2.grad)


@pytest.mark.parametrize(
    "args, message",
    [
        ((4, 10, 4), r"d_model \(10\) must be divisible by num_heads \(4\)"),
        ((4, 8, 0), r"num_heads \(0\)"),
        ((0, 8, None), r"num_tokens \(0\)"),
    ],
)
def test_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadTokenMixing(*args)
    with pytest.raises(ValueError, match=r"kernel \('cuda'\)"):
        MultiHeadTokenMixing(4, 8, kernel="cuda")
