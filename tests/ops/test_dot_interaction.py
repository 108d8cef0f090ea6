"""Pairwise dot products (ops/dot_interaction.py): the batched kernel against the loop and
against TorchRec DLRM's own InteractionArch, forward and backward."""

import pytest
import torch
from torchrec.models.dlrm import InteractionArch

from torchrec_rankmixer.ops.dot_interaction import (
    dot_interaction,
    dot_interaction_batched,
    dot_interaction_reference,
)


def _vectors(B: int = 4, F: int = 5, d: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(F)
    return torch.randn(B, F, d, generator=g, dtype=torch.float64, requires_grad=True)


def test_reference_is_the_pairwise_definition() -> None:
    v = _vectors()
    out = dot_interaction_reference(v)
    assert out.shape == (4, 10)
    assert torch.allclose(out[:, 0], (v[:, 0] * v[:, 1]).sum(-1))  # pair (0, 1) first
    assert torch.allclose(out[:, 4], (v[:, 1] * v[:, 2]).sum(-1))  # then (1, 2) after (0, 4)
    assert torch.allclose(out[:, -1], (v[:, 3] * v[:, 4]).sum(-1))


@pytest.mark.parametrize("F", [2, 3, 7])
def test_batched_matches_reference_forward_and_backward(F: int) -> None:
    v1 = _vectors(F=F)
    v2 = v1.detach().clone().requires_grad_()
    out1, out2 = dot_interaction_reference(v1), dot_interaction_batched(v2)
    torch.testing.assert_close(out2, out1)
    g = torch.randn_like(out1)
    out1.backward(g)
    out2.backward(g)
    torch.testing.assert_close(v2.grad, v1.grad)


def test_matches_torchrec_interaction_arch() -> None:
    """Same pairs, same order as TorchRec DLRM's interaction (dense first, then features)."""
    B, F, d = 3, 4, 8
    v = torch.randn(B, F + 1, d)
    theirs = InteractionArch(num_sparse_features=F)(v[:, 0], v[:, 1:])[:, d:]  # drop the dense copy
    torch.testing.assert_close(dot_interaction(v), theirs)


def test_kernel_dispatch_and_unknown_kernel() -> None:
    v = _vectors().detach()
    torch.testing.assert_close(dot_interaction(v, "reference"), dot_interaction(v, "grouped_mm"))
    with pytest.raises(ValueError, match=r"kernel \('fused'\)"):
        dot_interaction(v, "fused")
