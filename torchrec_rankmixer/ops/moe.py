"""Per-token mixture-of-experts kernels: gated sums of E small GELU FFNs per token.

Every token t has its own E experts; expert (t, e) is ``f_te(x) = GELU(x W1 + b1) W2 + b2``
with w1 [T, E, D, h], b1 [T, E, h], w2 [T, E, h, D], b2 [T, E, D] (h the expert width).
Given gates g [B, T, E] (zero = inactive), every kernel returns

    y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])          # (B, T, D)

- :func:`moe_experts_reference`: the readable definition, a loop over (t, e).
- :func:`moe_experts_dense`: computes every expert for every row in two batched
  matmuls over T (the dense-training path; the gate is folded into the hidden layer:
  ``y_t = [g ⊙ H_t] W2cat_t + g b2_t``).
- :func:`moe_experts_sparse`: runs only the active (sample, token, expert) triples.
  It groups them by expert (t, e), gathers their rows and runs one grouped matmul
  per layer (kernels of ops/kernels.py: ``"batched"``, a [G, C, D] padded bmm over the
  T*E experts, C the largest group, the CPU default; ``"grouped_mm"``:
  ``torch._grouped_mm`` with offsets, the CUDA default; ``"reference"``: one pair of
  addmm per non-empty group, :func:`split_groups`), then scatter-adds the gated outputs. Inactive
  experts cost nothing but bookkeeping.
- :func:`moe_experts`: the dispatcher (dense or sparse execution, ``kernel=``), by
  :func:`dispatch_experts`.

ops/moe_swiglu.py's SwiGLU experts reuse the grouping, the reference loop
(:func:`gated_sum_loop`) and the dispatch.

All are equal up to float rounding (tested forward and backward).
"""

from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel


def _check_shapes(
    x: torch.Tensor, gates: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, in_factor: int = 1
) -> None:
    """x [B, T, D], gates [B, T, E], w1 [T, E, D, in_factor*h], w2 [T, E, h, D] agree
    (``in_factor=2``: SwiGLU experts, whose w1 stacks gate and up; ops/moe_swiglu.py)."""
    if torch.fx._symbolic_trace.is_fx_symbolic_tracing():
        return  # FX proxies cannot drive control flow; the traced module fixes the shapes
    if x.dim() != 3 or gates.dim() != 3:
        raise ValueError(
            f"x {tuple(x.shape)} and gates {tuple(gates.shape)} must be 3-D [B, T, D] / [B, T, E]"
        )
    B, T, D = x.shape
    if gates.shape[:2] != (B, T) or tuple(w1.shape[:3]) != (T, gates.shape[2], D):
        raise ValueError(
            f"shapes disagree: x {tuple(x.shape)}, gates {tuple(gates.shape)}, "
            f"w1 {tuple(w1.shape)} (want [T, E, D, h])"
        )
    want = (T, gates.shape[2], w1.shape[3] // in_factor, D)
    if tuple(w2.shape) != want or w1.shape[3] % in_factor:
        raise ValueError(f"w2 {tuple(w2.shape)} must be [T, E, h, D] = {want}")


def gated_sum_loop(
    x: torch.Tensor, gates: torch.Tensor, expert: Callable[[int, int, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``y[:, t] = sum_e gates[:, t, e] * expert(t, e, x[:, t])``, one expert at a time: the
    loop of every reference kernel here and in ops/moe_swiglu.py (slow; for tests and reading).

    Args:
        x: tokens [B, T, D].
        gates: [B, T, E].
        expert: ``(t, e, x_t [B, D]) -> [B, D]``, expert (t, e) on the rows of token t.

    Example::

        >>> x, g = torch.ones(2, 3, 4), torch.ones(2, 3, 5)
        >>> gated_sum_loop(x, g, lambda t, e, x_t: x_t * e)[0, 0]  # (0 + 1 + 2 + 3 + 4) * x
        tensor([10., 10., 10., 10.])
    """
    tokens = []
    for t in range(gates.shape[1]):
        y_t = torch.zeros_like(x[:, t])  # (B, D)
        for e in range(gates.shape[2]):
            y_t = y_t + gates[:, t, e : e + 1] * expert(t, e, x[:, t])
        tokens.append(y_t)
    return torch.stack(tokens, dim=1)  # (B, T, D)


def moe_experts_reference(
    x: torch.Tensor, gates: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """The definition, one expert at a time (slow; for tests and reading).

    Args:
        x: tokens [B, T, D].
        gates: [B, T, E], >= 0 for ReLU routing; zero means inactive.
        w1: [T, E, D, h]; b1: [T, E, h]; w2: [T, E, h, D]; b2: [T, E, D].

    Returns:
        [B, T, D].

    Example::

        >>> B, T, E, D, h = 2, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.rand(B, T, E)
        >>> ws = (torch.randn(T, E, D, h), torch.randn(T, E, h), torch.randn(T, E, h, D),
        ...       torch.randn(T, E, D))
        >>> moe_experts_reference(x, g, *ws).shape
        torch.Size([2, 3, 5])
    """
    _check_shapes(x, gates, w1, w2)
    return gated_sum_loop(
        x, gates, lambda t, e, x_t: F.gelu(x_t @ w1[t, e] + b1[t, e]) @ w2[t, e] + b2[t, e]  # (B, D)
    )


def moe_experts_dense(
    x: torch.Tensor, gates: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """Every expert for every row, in two batched matmuls over T (dense training).

    Args and returns as :func:`moe_experts_reference`.

    Example::

        >>> B, T, E, D, h = 2, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.rand(B, T, E)
        >>> ws = (torch.randn(T, E, D, h), torch.randn(T, E, h), torch.randn(T, E, h, D),
        ...       torch.randn(T, E, D))
        >>> torch.allclose(moe_experts_dense(x, g, *ws), moe_experts_reference(x, g, *ws),
        ...                atol=1e-4)
        True
    """
    _check_shapes(x, gates, w1, w2)
    T, E, D, h = w1.shape
    B = x.shape[0]
    xt = x.transpose(0, 1)  # (T, B, D)
    w1cat = w1.permute(0, 2, 1, 3).reshape(T, D, E * h)  # (T, D, E*h)
    hidden = F.gelu(torch.baddbmm(b1.reshape(T, 1, E * h), xt, w1cat))  # (T, B, E*h)
    gt = gates.transpose(0, 1)  # (T, B, E)
    gated = (hidden.view(T, B, E, h) * gt.unsqueeze(-1)).view(T, B, E * h)  # (T, B, E*h)
    y = torch.baddbmm(torch.bmm(gt, b2), gated, w2.reshape(T, E * h, D))  # (T, B, D)
    return y.transpose(0, 1)  # (B, T, D)


def group_active(gates: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The active (sample, token, expert) triples, sorted by expert group g = t*E + e.

    Args:
        gates: [B, T, E]; an entry is active where it is non-zero.

    Returns:
        ``(group, row, gate, counts)``: for the N active triples sorted by group,
        ``group`` [N] (t*E + e), ``row`` [N] (b*T + t, a row of x viewed [B*T, D]),
        ``gate`` [N] (the gate values); ``counts`` [T*E] active rows per group.

    Example::

        >>> g = torch.tensor([[[0.0, 2.0], [1.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]])
        >>> group, row, gate, counts = group_active(g)
        >>> group.tolist(), row.tolist(), gate.tolist(), counts.tolist()
        ([0, 1, 1, 2], [2, 0, 2, 1], [3.0, 2.0, 4.0, 1.0], [1, 2, 1, 0])
    """
    B, T, E = gates.shape
    flat = gates.reshape(-1)
    idx = flat.nonzero().squeeze(1)  # (N,) in (b, t, e) row-major order
    group = idx % (T * E)
    group, order = torch.sort(group, stable=True)
    idx = idx[order]
    counts = torch.bincount(group, minlength=T * E)
    return group, idx // E, flat[idx], counts


def pad_groups(xs: torch.Tensor, group: torch.Tensor, counts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows xs [N, D] sorted by group -> ``(padded [G, C, D], pos [N])``: row i sits at
    ``padded[group[i], pos[i]]``; C is the largest group, the other slots are zero.

    Example::

        >>> padded, pos = pad_groups(torch.ones(3, 2), torch.tensor([0, 0, 2]), torch.tensor([2, 0, 1]))
        >>> padded.shape, pos.tolist()
        (torch.Size([3, 2, 2]), [0, 1, 0])
    """
    capacity = counts.max().item()  # unbacked (data-dependent) under torch.export
    torch._check(capacity >= 0)
    starts = torch.cumsum(counts, 0) - counts  # (G,)
    pos = torch.arange(xs.shape[0], device=xs.device) - starts[group]  # slot in its group
    padded = xs.new_zeros(counts.shape[0], capacity, xs.shape[1])
    padded[group, pos] = xs  # (G, C, D)
    return padded, pos


def _sparse_batched(
    xs: torch.Tensor, group: torch.Tensor, counts: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """Rows xs [N, D] sorted by group -> expert outputs [N, D] via [G, C, .] bmm."""
    padded, pos = pad_groups(xs, group, counts)  # (G, C, D)
    hidden = F.gelu(torch.baddbmm(b1.unsqueeze(1), padded, w1))  # (G, C, h)
    out = torch.baddbmm(b2.unsqueeze(1), hidden, w2)  # (G, C, D)
    return out[group, pos]  # (N, D)


def _sparse_grouped_mm(
    xs: torch.Tensor, group: torch.Tensor, counts: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """Rows xs [N, D] sorted by group -> [N, D] with ``torch._grouped_mm`` (offsets)."""
    offs = torch.cumsum(counts, 0).to(torch.int32)
    hidden = F.gelu(torch._grouped_mm(xs, w1, offs=offs) + b1[group])  # (N, h)
    return torch._grouped_mm(hidden, w2, offs=offs) + b2[group]  # (N, D)


def split_groups(xs: torch.Tensor, counts: torch.Tensor) -> List[Tuple[int, torch.Tensor]]:
    """Rows xs [N, D] sorted by group -> ``(g, rows of group g)`` for every non-empty group,
    the groups the ``"reference"`` sparse kernels run one at a time (when no row is active:
    group 0 with no rows, so that the outputs still concatenate). TorchScript-able.

    Example::

        >>> [(g, rows.shape[0]) for g, rows in split_groups(torch.ones(3, 2), torch.tensor([2, 0, 1]))]
        [(0, 2), (2, 1)]
    """
    sizes: List[int] = counts.tolist()
    groups: List[Tuple[int, torch.Tensor]] = []
    for g, rows in enumerate(xs.split(sizes)):
        if sizes[g] > 0:
            groups.append((g, rows))
    return groups if len(groups) > 0 else [(0, xs)]


def _sparse_reference(
    xs: torch.Tensor, counts: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    """Rows xs [N, D] sorted by group -> [N, D], one pair of addmm per non-empty group."""
    return torch.cat([torch.addmm(b2[g], F.gelu(torch.addmm(b1[g], rows, w1[g])), w2[g])
                      for g, rows in split_groups(xs, counts)])


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    return hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16


def _grouped_mm_runs(x: torch.Tensor, d_model: int, hidden: int) -> bool:
    """torch._grouped_mm needs fp32/bf16/fp16 and 16-byte aligned row strides."""
    if not hasattr(torch, "_grouped_mm") or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    return (d_model * x.element_size()) % 16 == 0 and (hidden * x.element_size()) % 16 == 0


def choose_sparse_kernel(x: torch.Tensor, requested: str) -> str:
    """Resolve ``"auto"``: ``"grouped_mm"`` for CUDA bf16, else ``"batched"`` (the padded
    bmm; on the 2-core CPU box ``torch._grouped_mm`` is ~60x slower, see docs/moe.md)."""
    requested = check_kernel("kernel", requested)
    if requested != Kernel.AUTO:
        return requested
    return Kernel.GROUPED_MM.value if _grouped_mm_ok(x) else Kernel.BATCHED.value


def resolve_sparse_kernel(x: torch.Tensor, kernel: str, hidden: int) -> str:
    """The sparse kernel that runs for ``x`` [B, T, D] and experts of width ``hidden``:
    :func:`choose_sparse_kernel`, then ``"batched"`` in place of a ``"grouped_mm"`` that
    ``torch._grouped_mm`` would reject (dtype or 16-byte alignment; same result).

    Example::

        >>> resolve_sparse_kernel(torch.randn(2, 3, 5), "grouped_mm", hidden=7)
        'batched'
    """
    chosen = choose_sparse_kernel(x, kernel)
    if chosen == Kernel.GROUPED_MM and not _grouped_mm_runs(x, x.shape[2], hidden):
        chosen = Kernel.BATCHED.value  # same result; the op rejects this dtype / alignment
    return str(chosen)


def moe_experts_sparse_resolved(
    x: torch.Tensor, gates: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, kernel: str,
) -> torch.Tensor:
    """The body of :func:`moe_experts_sparse` once shapes are checked and ``kernel`` is
    resolved (``"batched"``, ``"grouped_mm"`` or ``"reference"``; anything else runs
    ``"batched"``). TorchScript-able: the TorchScript export points traced
    :func:`moe_experts_sparse` calls here (inference/scripting.py).

    Args and returns as :func:`moe_experts_sparse`.

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, h), torch.randn(T, E, h), torch.randn(T, E, h, D),
        ...       torch.randn(T, E, D))
        >>> scripted = torch.jit.script(moe_experts_sparse_resolved)
        >>> torch.equal(scripted(x, g, *ws, "batched"),
        ...             moe_experts_sparse(x, g, *ws, kernel="batched"))
        True
    """
    B, T, D = x.shape[0], x.shape[1], x.shape[2]
    E, h = w1.shape[1], w1.shape[3]
    group, row, gate, counts = group_active(gates)
    out = x.new_zeros(B * T, D)
    xs = x.reshape(B * T, D)[row]  # (N, D)
    flat = (w1.reshape(T * E, D, h), b1.reshape(T * E, h), w2.reshape(T * E, h, D), b2.reshape(T * E, D))
    if kernel == "grouped_mm":
        ys = _sparse_grouped_mm(xs, group, counts, flat[0], flat[1], flat[2], flat[3])  # (N, D)
    elif kernel == "reference":
        ys = _sparse_reference(xs, counts, flat[0], flat[1], flat[2], flat[3])
    else:
        ys = _sparse_batched(xs, group, counts, flat[0], flat[1], flat[2], flat[3])
    out = out.index_add(0, row, ys * gate.unsqueeze(1))
    return out.view(B, T, D)


def moe_experts_sparse(
    x: torch.Tensor, gates: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, kernel: str = "auto",
) -> torch.Tensor:
    """Only the active (sample, token, expert) triples are computed.

    Args:
        x, gates, w1, b1, w2, b2: as :func:`moe_experts_reference`.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.
            ``"grouped_mm"`` falls back to ``"batched"`` where ``torch._grouped_mm``
            rejects the dtype or the widths (rows must be 16-byte aligned).

    Returns:
        [B, T, D]; rows with no active expert are zero.

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x = torch.randn(B, T, D)
        >>> g = torch.relu(torch.randn(B, T, E))  # about half the experts active
        >>> ws = (torch.randn(T, E, D, h), torch.randn(T, E, h), torch.randn(T, E, h, D),
        ...       torch.randn(T, E, D))
        >>> torch.allclose(moe_experts_sparse(x, g, *ws), moe_experts_dense(x, g, *ws),
        ...                atol=1e-4)
        True
    """
    _check_shapes(x, gates, w1, w2)
    chosen = resolve_sparse_kernel(x, kernel, w1.shape[3])
    return moe_experts_sparse_resolved(x, gates, w1, b1, w2, b2, chosen)


def dispatch_experts(
    kernels: Tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor], Callable[..., torch.Tensor]],
    x: torch.Tensor, gates: torch.Tensor, weights: Sequence[torch.Tensor], sparse: bool, kernel: str,
) -> torch.Tensor:
    """Run one family of expert kernels, ``kernels = (reference, dense, sparse)``, each called
    as ``f(x, gates, *weights)``: sparse execution runs ``sparse`` with ``kernel=kernel``;
    dense execution (training, or every expert at inference) runs ``reference`` for
    ``kernel="reference"`` and ``dense`` otherwise. The dispatch of :func:`moe_experts`
    and of ops/moe_swiglu.py's ``swiglu_experts``.

    Example::

        >>> kernels = (lambda x, g: "loop", lambda x, g: "bmm", lambda x, g, kernel: kernel)
        >>> [dispatch_experts(kernels, None, None, (), s, k)
        ...  for s, k in ((False, "reference"), (False, "auto"), (True, "grouped_mm"))]
        ['loop', 'bmm', 'grouped_mm']
    """
    reference, dense, sparse_kernel = kernels
    if sparse:
        return sparse_kernel(x, gates, *weights, kernel=kernel)
    if check_kernel("kernel", kernel) == Kernel.REFERENCE:
        return reference(x, gates, *weights)
    return dense(x, gates, *weights)


def moe_experts(
    x: torch.Tensor, gates: torch.Tensor,
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
    sparse: bool, kernel: str = "auto",
) -> torch.Tensor:
    """Gated experts with the kernel named: sparse or dense execution
    (:func:`dispatch_experts` over :func:`moe_experts_reference`, :func:`moe_experts_dense`
    and :func:`moe_experts_sparse`).

    Args:
        x, gates, w1, b1, w2, b2: as :func:`moe_experts_reference`.
        sparse: compute only the active (sample, token, expert) triples.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        [B, T, D].

    Example::

        >>> B, T, E, D, h = 4, 3, 4, 5, 6
        >>> x, g = torch.randn(B, T, D), torch.relu(torch.randn(B, T, E))
        >>> ws = (torch.randn(T, E, D, h), torch.randn(T, E, h), torch.randn(T, E, h, D),
        ...       torch.randn(T, E, D))
        >>> torch.allclose(moe_experts(x, g, *ws, sparse=True),
        ...                moe_experts(x, g, *ws, sparse=False, kernel="reference"), atol=1e-4)
        True
    """
    kernels = (moe_experts_reference, moe_experts_dense, moe_experts_sparse)
    return dispatch_experts(kernels, x, gates, (w1, b1, w2, b2), sparse, kernel)
