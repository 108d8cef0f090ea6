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

import torch

from torchrec_rankmixer.ops.moe import (
    _check_shapes,
    dispatch_experts,
    gated_sum_loop,
    group_active,
    pad_groups,
    resolve_sparse_kernel,
    split_groups,
)
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
    return gated_sum_loop(x, gates, lambda t, e, x_t: swiglu(x_t @ w_in[t, e]) @ w_out[t, e])


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
        groups = split_groups(xs, counts)  # one pair of mm per non-empty group
        ys = torch.cat([swiglu(rows @ w_in_g[g]) @ w_out_g[g] for g, rows in groups])
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
    """Gated SwiGLU experts with the kernel named: :func:`~torchrec_rankmixer.ops.moe.moe_experts`
    for the kernels above (:func:`~torchrec_rankmixer.ops.moe.dispatch_experts`), with
    ``w_in``, ``w_out`` as in :func:`swiglu_experts_reference` in place of w1, b1, w2, b2.

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, 2 * h), torch.randn(T, E, h, D))
        >>> y = swiglu_experts(x, g, *ws, sparse=True, kernel="reference")  # one expert group at a time
        >>> torch.allclose(y, swiglu_experts(x, g, *ws, sparse=False), atol=1e-4)
        True
    """
    kernels = (swiglu_experts_reference, swiglu_experts_dense, swiglu_experts_sparse)
    return dispatch_experts(kernels, x, gates, (w_in, w_out), sparse, kernel)
