"""Pairwise dot products of F vectors (DLRM's interaction): a reference and a batched kernel.

Input v [B, F, d]: the feature embeddings (and the dense arch output) of each sample, one
row per feature. Output [B, F*(F-1)/2]: <v_i, v_j> for every pair i < j, in row-major
order of the strict upper triangle ((0, 1), (0, 2), ..., (1, 2), ...), which is the order
TorchRec's ``InteractionArch`` uses. ``num_vectors`` (F) may be given when the caller
knows it, so that FX / TorchScript tracing sees a constant rather than a shape.
"""

from typing import List, Optional

import torch

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel


def dot_interaction_reference(v: torch.Tensor, num_vectors: Optional[int] = None) -> torch.Tensor:
    """Every pair's dot product written out as a loop (slow; for tests and reading).

    Args:
        v: vectors [B, F, d], F >= 2.
        num_vectors: F (default: ``v.shape[1]``).

    Returns:
        [B, F*(F-1)/2]: ``<v[:, i], v[:, j]>`` for i < j, row-major.

    Example::

        >>> v = torch.tensor([[[1.0, 0.0], [2.0, 3.0], [0.5, 1.0]]])
        >>> dot_interaction_reference(v)
        tensor([[2.0000, 0.5000, 4.0000]])
    """
    num = v.shape[1] if num_vectors is None else num_vectors
    pairs: List[torch.Tensor] = []
    for i in range(num):
        for j in range(i + 1, num):
            pairs.append((v[:, i] * v[:, j]).sum(dim=-1))  # (B,)
    return torch.stack(pairs, dim=1)


def dot_interaction_batched(v: torch.Tensor, num_vectors: Optional[int] = None) -> torch.Tensor:
    """Same result as :func:`dot_interaction_reference`: one batched Gram matrix, then the
    strict upper triangle gathered with precomputed indices.

    Args:
        v: vectors [B, F, d], F >= 2.
        num_vectors: F (default: ``v.shape[1]``).

    Returns:
        [B, F*(F-1)/2].

    Example::

        >>> v = torch.randn(3, 4, 8)
        >>> torch.allclose(dot_interaction_batched(v), dot_interaction_reference(v), atol=1e-6)
        True
    """
    num = v.shape[1] if num_vectors is None else num_vectors
    gram = torch.bmm(v, v.transpose(1, 2))  # (B, F, F)
    rows, cols = torch.triu_indices(num, num, offset=1, device=v.device)
    return gram[:, rows, cols]  # (B, F*(F-1)/2)


def dot_interaction(v: torch.Tensor, kernel: str = "auto", num_vectors: Optional[int] = None) -> torch.Tensor:
    """Pairwise dot products with the kernel named (ops/kernels.py).

    ``"reference"`` runs :func:`dot_interaction_reference`; every other kernel runs
    :func:`dot_interaction_batched` (one bmm; there is nothing to group).

    Args:
        v: vectors [B, F, d], F >= 2.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.
        num_vectors: F (default: ``v.shape[1]``).

    Returns:
        [B, F*(F-1)/2].

    Example::

        >>> v = torch.randn(2, 3, 4)
        >>> dot_interaction(v).shape
        torch.Size([2, 3])
    """
    if check_kernel("kernel", kernel) == Kernel.REFERENCE:
        return dot_interaction_reference(v, num_vectors)
    return dot_interaction_batched(v, num_vectors)
