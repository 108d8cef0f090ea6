"""Multi-head token mixing: a literal reference and a batched reshape/transpose kernel.

Input x [B, T, D]; each token splits into H heads of width D/H. Output token h is the
concatenation over t of head h of token t: y [B, H, T*D/H]. With H = T (the paper),
y has the input's shape [B, T, D].
"""

from typing import List

import torch

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel


def token_mixing_reference(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The paper's equation written out with Python loops (slow; for tests and reading).

    Args:
        x: tokens [B, T, D].
        num_heads: H, must divide D.

    Returns:
        Mixed tokens [B, H, T*D/H].

    Example::

        >>> x = torch.arange(2 * 2 * 4.0).reshape(1, 2 * 2, 4)[:, :2]
        >>> token_mixing_reference(x, 2).shape
        torch.Size([1, 2, 4])
    """
    _, num_tokens, d_model = x.shape
    head_dim = d_model // num_heads
    out: List[torch.Tensor] = []
    for h in range(num_heads):
        parts = [x[:, t, h * head_dim : (h + 1) * head_dim] for t in range(num_tokens)]
        out.append(torch.cat(parts, dim=-1))  # s^(h) = Concat_t x_t^(h)
    return torch.stack(out, dim=1)


def token_mixing_batched(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Same result as :func:`token_mixing_reference` with one reshape and transpose.

    Args:
        x: tokens [B, T, D].
        num_heads: H, must divide D.

    Returns:
        Mixed tokens [B, H, T*D/H] (contiguous).

    Example::

        >>> x = torch.randn(3, 4, 8)
        >>> torch.equal(token_mixing_batched(x, 4), token_mixing_reference(x, 4))
        True
    """
    batch, num_tokens, d_model = x.shape
    head_dim = d_model // num_heads
    y = x.reshape(batch, num_tokens, num_heads, head_dim)  # (B, T, H, D/H)
    y = y.transpose(1, 2)  # (B, H, T, D/H)
    return y.reshape(batch, num_heads, num_tokens * head_dim)  # (B, H, T*D/H)


def token_mixing(x: torch.Tensor, num_heads: int, kernel: str = "auto") -> torch.Tensor:
    """Multi-head token mixing with the kernel named (ops/kernels.py).

    ``"reference"`` runs :func:`token_mixing_reference`; every other kernel runs
    :func:`token_mixing_batched` (mixing is a permutation, with no matmul to group).

    Args:
        x: tokens [B, T, D].
        num_heads: H, must divide D.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        Mixed tokens [B, H, T*D/H].

    Example::

        >>> x = torch.randn(2, 4, 8)
        >>> torch.equal(token_mixing(x, 4, "reference"), token_mixing(x, 4))
        True
    """
    if check_kernel("kernel", kernel) == Kernel.REFERENCE:
        return token_mixing_reference(x, num_heads)
    return token_mixing_batched(x, num_heads)  # (B, H, T*D/H)
