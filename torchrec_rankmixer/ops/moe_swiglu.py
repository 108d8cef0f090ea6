"""Per-token mixture-of-experts kernels with SwiGLU experts (TokenMixer-Large's Sparse-MoE).

Every token t has its own E experts; expert (t, e) is a SwiGLU FFN without biases,
``f_te(x) = (SiLU(x Wg) * (x Wu)) Wd``, stored as w_in [T, E, D, 2h] (gate columns,
then up columns) and w_out [T, E, h, D]. Given gates g [B, T, E] (zero = inactive),
every kernel returns

    y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])          # (B, T, D)

- :func:`swiglu_experts_reference`: the definition, a loop over (t, e).
- :func:`swiglu_experts_dense`: every expert for every row, two batched matmuls over T.
- :func:`swiglu_experts_sparse`: only the active (sample, token, expert) triples, grouped
  by expert as ops/moe.py's GELU kernel does (:func:`~torchrec_rankmixer.ops.moe.group_active`,
  :func:`~torchrec_rankmixer.ops.moe.pad_groups`); kernels ``"batched"`` (padded bmm),
  ``"grouped_mm"`` and ``"reference"``.
- :func:`swiglu_experts`: the dispatcher (dense or sparse execution, ``kernel=``).

All are equal up to float rounding (tested forward and backward).
"""

from typing import List

import torch

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel
from torchrec_rankmixer.ops.moe import _check_shapes, group_active, pad_groups, resolve_sparse_kernel
from torchrec_rankmixer.ops.per_token_swiglu import swiglu


def swiglu_experts_reference(
    x: torch.Tensor, gates: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor
) -> torch.Tensor:
    """The definition, one expert at a time (slow; for tests and reading).

    Args:
        x: tokens [B, T, D].
        gates: [B, T, E]; zero means inactive.
        w_in: [T, E, D, 2h]; w_out: [T, E, h, D].

    Returns:
        [B, T, D].

    Example::

        >>> B, T, E, D, h = 2, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.rand(B, T, E)
        >>> swiglu_experts_reference(x, g, torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D)).shape
        torch.Size([2, 3, 5])
    """
    _check_shapes(x, gates, w_in, w_out, in_factor=2)
    T, E = w_in.shape[0], w_in.shape[1]
    tokens = []
    for t in range(T):
        y_t = torch.zeros_like(x[:, t])  # (B, D)
        for e in range(E):
            f = swiglu(x[:, t] @ w_in[t, e]) @ w_out[t, e]  # (B, D)
            y_t = y_t + gates[:, t, e : e + 1] * f
        tokens.append(y_t)
    return torch.stack(tokens, dim=1)  # (B, T, D)


def swiglu_experts_dense(
    x: torch.Tensor, gates: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor
) -> torch.Tensor:
    """Every expert for every row, in two batched matmuls over T (dense execution).

    Args and returns as :func:`swiglu_experts_reference`.

    Example::

        >>> B, T, E, D, h = 2, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.rand(B, T, E)
        >>> ws = (torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D))
        >>> torch.allclose(swiglu_experts_dense(x, g, *ws), swiglu_experts_reference(x, g, *ws),
        ...                atol=1e-4)
        True
    """
    _check_shapes(x, gates, w_in, w_out, in_factor=2)
    T, E, D, h2 = w_in.shape
    B, h = x.shape[0], h2 // 2
    xt = x.transpose(0, 1)  # (T, B, D)
    w_cat = w_in.permute(0, 2, 1, 3).reshape(T, D, E * h2)  # (T, D, E*2h)
    hidden = swiglu(torch.bmm(xt, w_cat).view(T, B, E, h2))  # (T, B, E, h)
    gated = (hidden * gates.transpose(0, 1).unsqueeze(-1)).reshape(T, B, E * h)  # (T, B, E*h)
    return torch.bmm(gated, w_out.reshape(T, E * h, D)).transpose(0, 1)  # (B, T, D)


def _sparse_reference(
    xs: torch.Tensor, counts: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor
) -> torch.Tensor:
    """Rows xs [N, D] sorted by group -> [N, D], one pair of mm per non-empty group."""
    outs: List[torch.Tensor] = []
    start = 0
    sizes: List[int] = counts.tolist()
    for g, n in enumerate(sizes):
        if n:
            outs.append(swiglu(xs[start : start + n] @ w_in[g]) @ w_out[g])
            start += n
    if len(outs) == 0:
        return xs.new_zeros(0, w_out.shape[-1])
    return torch.cat(outs)


def swiglu_experts_sparse_resolved(
    x: torch.Tensor, gates: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, kernel: str
) -> torch.Tensor:
    """:func:`swiglu_experts_sparse` with ``kernel`` already resolved (``"batched"``,
    ``"grouped_mm"`` or ``"reference"``; anything else runs ``"batched"``).
    TorchScript-able, so a traced call to it scripts as it is (the model calls it as an FX
    leaf; see :class:`~torchrec_rankmixer.modules.moe.swiglu.SwiGLUTokenExperts`).

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D))
        >>> scripted = torch.jit.script(swiglu_experts_sparse_resolved)
        >>> torch.equal(scripted(x, g, *ws, "batched"), swiglu_experts_sparse(x, g, *ws, kernel="batched"))
        True
    """
    B, T, D = x.shape[0], x.shape[1], x.shape[2]
    E, h2 = w_in.shape[1], w_in.shape[3]
    group, row, gate, counts = group_active(gates)
    xs = x.reshape(B * T, D)[row]  # (N, D)
    w_in_g, w_out_g = w_in.reshape(T * E, D, h2), w_out.reshape(T * E, h2 // 2, D)  # one group per expert
    if kernel == "grouped_mm":
        offs = torch.cumsum(counts, 0).to(torch.int32)
        hidden = swiglu(torch._grouped_mm(xs, w_in_g, offs=offs))  # (N, h)
        ys = torch._grouped_mm(hidden, w_out_g, offs=offs)  # (N, D)
    elif kernel == "reference":
        ys = _sparse_reference(xs, counts, w_in_g, w_out_g)
    else:
        padded, pos = pad_groups(xs, group, counts)  # (G, C, D)
        ys = torch.bmm(swiglu(torch.bmm(padded, w_in_g)), w_out_g)[group, pos]  # (N, D)
    out = x.new_zeros(B * T, D).index_add(0, row, ys * gate.unsqueeze(1))
    return out.view(B, T, D)


def swiglu_experts_sparse(
    x: torch.Tensor, gates: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, kernel: str = "auto"
) -> torch.Tensor:
    """Only the active (sample, token, expert) triples are computed.

    Args:
        x, gates, w_in, w_out: as :func:`swiglu_experts_reference`.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``
            (resolved by :func:`~torchrec_rankmixer.ops.moe.resolve_sparse_kernel`).

    Returns:
        [B, T, D]; rows with no active expert are zero.

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D))
        >>> torch.allclose(swiglu_experts_sparse(x, g, *ws), swiglu_experts_dense(x, g, *ws),
        ...                atol=1e-4)
        True
    """
    _check_shapes(x, gates, w_in, w_out, in_factor=2)
    chosen = resolve_sparse_kernel(x, kernel, w_out.shape[2])
    return swiglu_experts_sparse_resolved(x, gates, w_in, w_out, chosen)


def swiglu_experts(
    x: torch.Tensor, gates: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor,
    sparse: bool, kernel: str = "auto",
) -> torch.Tensor:
    """Gated SwiGLU experts with the kernel named: sparse or dense execution.

    Dense execution runs :func:`swiglu_experts_reference` for ``"reference"`` and
    :func:`swiglu_experts_dense` otherwise; sparse execution runs
    :func:`swiglu_experts_sparse` with ``kernel``.

    Args:
        x, gates, w_in, w_out: as :func:`swiglu_experts_reference`.
        sparse: compute only the active (sample, token, expert) triples.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        [B, T, D].

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D))
        >>> torch.allclose(swiglu_experts(x, g, *ws, sparse=True),
        ...                swiglu_experts(x, g, *ws, sparse=False, kernel="reference"), atol=1e-4)
        True
    """
    if sparse:
        return swiglu_experts_sparse(x, gates, w_in, w_out, kernel=kernel)
    if check_kernel("kernel", kernel) == Kernel.REFERENCE:
        return swiglu_experts_reference(x, gates, w_in, w_out)
    return swiglu_experts_dense(x, gates, w_in, w_out)
