"""The tokenizer's per-token projections: token g = (its embedding columns) @ W_g + b_g.

Input: the embedded features as one matrix ``values`` [B, F_w] (F_w the summed embedding
widths). Token g reads the columns ``columns[g]`` (w_g of them) and projects them with
its own ``weight[g, :w_g]`` [w_g, D] and ``bias[g]`` [D]. ``weight`` is stored padded to
the widest token, [G, W_max, D]; rows past w_g are zero and unused.

- :func:`token_projection_reference`: one matmul per token (readable).
- :func:`token_projection_batched`: one ``index_select`` gathers every token's columns
  into [B, G, W_max] (narrower tokens read an all-zero column), then one ``baddbmm``.
- :func:`token_projection`: the dispatcher (``kernel=``, ops/kernels.py).
"""

from typing import List, Optional

import torch
from torch import nn

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel


def token_projection_reference(
    values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, columns: List[List[int]]
) -> torch.Tensor:
    """One matmul per token.

    Args:
        values: [B, F_w] embedded features.
        weight: [G, W_max, D]; bias: [G, D].
        columns: token g's column indices into ``values`` (G lists).

    Returns:
        [B, G, D].

    Example::

        >>> v, w, b = torch.randn(2, 3), torch.randn(2, 2, 4), torch.zeros(2, 4)
        >>> token_projection_reference(v, w, b, [[0, 1], [2]]).shape
        torch.Size([2, 2, 4])
    """
    tokens = []
    for g, cols in enumerate(columns):
        tokens.append(values[:, cols] @ weight[g, : len(cols)] + bias[g])  # (B, D)
    return torch.stack(tokens, dim=1)  # (B, G, D)


def token_projection_batched(
    values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gather_index: Optional[torch.Tensor]
) -> torch.Tensor:
    """One gather and one batched matmul.

    Args:
        values: [B, F_w] embedded features.
        weight: [G, W_max, D]; bias: [G, D].
        gather_index: [G * W_max] column of ``values`` for each (token, slot); the index
            F_w reads an all-zero column (padding of narrower tokens). ``None`` when the
            columns are already in token order and every token is W_max wide.

    Returns:
        [B, G, D].

    Example::

        >>> v, w, b = torch.randn(2, 3), torch.randn(2, 2, 4), torch.zeros(2, 4)
        >>> index = torch.tensor([0, 1, 2, 3])  # token 1 = column 2 + the zero column
        >>> torch.allclose(token_projection_batched(v, w, b, index),
        ...                token_projection_reference(v, w, b, [[0, 1], [2]]), atol=1e-6)
        True
    """
    batch, (groups, width, _) = values.shape[0], weight.shape
    if gather_index is None:
        grouped = values.reshape(batch, groups, width)  # (B, G, W)
    else:
        padded = nn.functional.pad(values, (0, 1))  # (B, F_w + 1), last column = 0
        grouped = padded.index_select(1, gather_index).reshape(batch, groups, width)  # (B, G, W)
    out = torch.baddbmm(bias.unsqueeze(1), grouped.transpose(0, 1), weight)  # (G, B, D)
    return out.transpose(0, 1)  # (B, G, D)


def token_projection(
    values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    columns: List[List[int]],
    gather_index: Optional[torch.Tensor],
    kernel: str = "auto",
) -> torch.Tensor:
    """Per-token projections with the kernel named: ``"reference"`` runs
    :func:`token_projection_reference`, every other kernel :func:`token_projection_batched`.

    Args:
        values, weight, bias: as :func:`token_projection_reference`.
        columns: for the reference kernel.
        gather_index: for the batched kernel.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        [B, G, D].
    """
    if check_kernel("kernel", kernel) == Kernel.REFERENCE:
        return token_projection_reference(values, weight, bias, columns)
    return token_projection_batched(values, weight, bias, gather_index)
