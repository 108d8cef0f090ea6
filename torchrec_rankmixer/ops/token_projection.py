"""The tokenizer's per-token projections: token g = (its embedding columns) @ W_g + b_g.

Input: the embedded features as one matrix ``values`` [B, F_w] (F_w the summed embedding
widths). Token g reads the columns ``columns[g]`` (w_g of them) and projects them with
its own ``weight[g, :w_g]`` [w_g, D] and ``bias[g]`` [D]. ``weight`` is stored padded to
the widest token, [G, W_max, D]; rows past w_g are zero and unused.

- :func:`token_projection_reference`: one matmul per token (readable).
- :func:`token_projection_batched`: one ``index_select`` gathers every token's columns
  into [B, G, W_max] (narrower tokens read an all-zero column), then one ``baddbmm``.
- :func:`token_projection_slots`: for tokens made of whole blocks of s columns (whole
  features of one width, the common case): one ``bmm`` per block [S, B, s] x [S, s, D]
  with the weight rows of the block's token, then a sum of each token's blocks. No
  padding FLOPs and no column gather (:func:`slot_plan` finds the blocks).
- :func:`token_projection`: the dispatcher (``kernel=``, ops/kernels.py).
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

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


# Narrower blocks keep the padded kernel: measured faster at d = 64 (1.1x-1.8x forward,
# 1.5x-2.1x forward + backward) but mixed at d = 10-16 (0.9x-1.25x; benchmarks/bench_tokenizer.py,
# one run under load, 2026-12-01).
MIN_SLOT_WIDTH = 32


@dataclass(frozen=True)
class SlotPlan:
    """The blocks (slots) of s columns that the tokens are made of.

    Attributes:
        width: s, the columns per slot.
        chunk: per slot, its block of ``values`` (columns ``chunk * s`` to ``chunk * s + s``).
        token: per slot, the token it feeds.
        row: per slot, its place in that token (weight rows ``row * s`` to ``row * s + s``).
        in_order: slot i reads block i, for every block of ``values``: the kernel needs no
            ``slot_chunk`` (:func:`token_projection_slots`).
    """

    width: int
    chunk: Tuple[int, ...]
    token: Tuple[int, ...]
    row: Tuple[int, ...]
    in_order: bool


def slot_plan(
    columns: Sequence[Sequence[int]], total_width: int, min_width: int = MIN_SLOT_WIDTH
) -> Optional[SlotPlan]:
    """The slots of a token plan, or None where the tokens are not made of aligned blocks
    of s >= ``min_width`` contiguous columns (s = the gcd of the token widths, which must
    divide ``total_width``, F_w).

    Example::

        >>> slot_plan([list(range(16)), list(range(16, 24))], total_width=24, min_width=8)
        SlotPlan(width=8, chunk=(0, 1, 2), token=(0, 0, 1), row=(0, 1, 0), in_order=True)
        >>> slot_plan([[0, 1], [2]], total_width=3) is None  # 1-column blocks: too narrow
        True
    """
    width = 0
    for cols in columns:
        width = math.gcd(width, len(cols))
    if width < min_width or total_width % width:
        return None
    chunk: List[int] = []
    token: List[int] = []
    row: List[int] = []
    for g, cols in enumerate(columns):
        for j in range(len(cols) // width):
            block = list(cols[j * width: (j + 1) * width])
            start = block[0]
            if start % width or block != list(range(start, start + width)):
                return None
            chunk.append(start // width)
            token.append(g)
            row.append(j)
    return SlotPlan(width, tuple(chunk), tuple(token), tuple(row), chunk == list(range(total_width // width)))


def token_projection_slots(
    values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    width: int,
    slot_token: torch.Tensor,
    slot_row: torch.Tensor,
    slot_chunk: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One bmm over slots, then each token's slots summed (an ``index_add``).

    Args:
        values: [B, F_w] embedded features, F_w a multiple of ``width``.
        weight: [G, W_max, D], W_max a multiple of ``width``; bias: [G, D].
        width: s, the columns per slot (:class:`SlotPlan`).
        slot_token: [S] the token of each slot; slot_row: [S] its place in the token.
        slot_chunk: [S] the block of ``values`` each slot reads; ``None`` when slot i
            reads block i.

    Returns:
        [B, G, D].

    Example::

        >>> cols = [list(range(16)), list(range(16, 24))]
        >>> v, w, b = torch.randn(2, 24), torch.randn(2, 16, 4), torch.randn(2, 4)
        >>> plan = slot_plan(cols, total_width=24, min_width=8)
        >>> out = token_projection_slots(v, w, b, plan.width, torch.tensor(plan.token), torch.tensor(plan.row))
        >>> torch.allclose(out, token_projection_reference(v, w, b, cols), atol=1e-5)
        True
    """
    batch, (groups, max_width, d_model) = values.shape[0], weight.shape
    blocks = values.reshape(batch, -1, width).transpose(0, 1)  # (C, B, s)
    if slot_chunk is not None:
        blocks = blocks.index_select(0, slot_chunk)  # (S, B, s)
    w = weight.reshape(groups, max_width // width, width, d_model)[slot_token, slot_row]  # (S, s, D)
    per_slot = torch.bmm(blocks, w)  # (S, B, D)
    out = torch.index_add(bias.unsqueeze(1).expand(groups, batch, d_model), 0, slot_token, per_slot)  # (G, B, D)
    return out.transpose(0, 1)  # (B, G, D)


def token_projection(
    values: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    columns: List[List[int]],
    gather_index: Optional[torch.Tensor],
    kernel: str = "auto",
    slot_width: int = 0,
    slot_token: Optional[torch.Tensor] = None,
    slot_row: Optional[torch.Tensor] = None,
    slot_chunk: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-token projections with the kernel named: ``"reference"`` runs
    :func:`token_projection_reference`; ``"auto"`` runs :func:`token_projection_slots`
    where the plan has slots (``slot_width`` > 0; as fast as the gather kernel or faster at
    the shapes measured, ``MIN_SLOT_WIDTH``), else
    :func:`token_projection_batched`; ``"batched"`` and ``"grouped_mm"`` run
    :func:`token_projection_batched`.

    Args:
        values, weight, bias: as :func:`token_projection_reference`.
        columns: for the reference kernel.
        gather_index: for :func:`token_projection_batched`.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.
        slot_width, slot_token, slot_row, slot_chunk: a :class:`SlotPlan` as tensors, for
            :func:`token_projection_slots`; ``slot_width`` 0: none.

    Returns:
        [B, G, D].
    """
    kernel = check_kernel("kernel", kernel)
    if kernel == Kernel.REFERENCE:
        return token_projection_reference(values, weight, bias, columns)
    if kernel == Kernel.AUTO and slot_width > 0 and slot_token is not None and slot_row is not None:
        return token_projection_slots(values, weight, bias, slot_width, slot_token, slot_row, slot_chunk)
    return token_projection_batched(values, weight, bias, gather_index)
