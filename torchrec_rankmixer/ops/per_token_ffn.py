"""Per-token FFN kernels: T independent 2-layer GELU MLPs applied to T tokens.

Weights: w1 [T, D, kD], b1 [T, kD], w2 [T, kD, D], b2 [T, D]. Input x [B, T, D] ->
output [B, T, D]. Token t uses only its own weights:
``y[:, t] = GELU(x[:, t] @ w1[t] + b1[t]) @ w2[t] + b2[t]``.

Kernels (all give the same result; parity is tested forward and backward):

- ``"loop"``: the readable reference, a Python loop of ``addmm`` over tokens.
- ``"bmm"``: all tokens in one ``baddbmm`` per layer on a [T, B, D] layout.
- ``"grouped_mm"``: ``torch._grouped_mm`` (bf16 on CUDA Hopper+; falls back to bmm
  where the op rejects the dtype/device).
- ``"auto"``: picks per call by device, dtype, batch size and grad mode, from the
  CPU measurements in docs/benchmarks.md (see :func:`choose_kernel`).
"""

import torch
import torch.nn.functional as F

KERNELS = ("auto", "loop", "bmm", "grouped_mm")

# Measured on the 2-core CPU dev machine (benchmarks/bench_ffn_kernels.py,
# docs/benchmarks.md): for fp32 with autograd the loop beats bmm above this batch.
CPU_LOOP_MIN_BATCH = 128


def _fx_or_script() -> bool:
    if torch.jit.is_scripting():
        return True
    tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(tracing()) if tracing is not None else torch.fx._symbolic_trace.is_fx_tracing()


def choose_kernel(x: torch.Tensor, requested: str) -> str:
    """Resolve ``"auto"`` to a concrete kernel for this input.

    Rules (from the measurements in docs/benchmarks.md):
    CUDA -> ``"bmm"``; CPU with B >= ``CPU_LOOP_MIN_BATCH`` -> ``"loop"``; else ``"bmm"``.
    Under FX tracing or TorchScript, where the batch size is symbolic, ``"bmm"``.
    """
    if requested != "auto":
        return requested
    if _fx_or_script():
        return "bmm"
    if x.device.type == "cpu" and x.shape[0] >= CPU_LOOP_MIN_BATCH:
        return "loop"
    return "bmm"


def per_token_ffn_loop(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """Reference: one small MLP per token, in a Python loop. x [B, T, D] -> [B, T, D]."""
    xt = x.transpose(0, 1).contiguous()  # (T, B, D): each token's rows contiguous
    outs = []
    for t in range(w1.shape[0]):
        h = F.gelu(torch.addmm(b1[t], xt[t], w1[t]))  # (B, kD)
        outs.append(torch.addmm(b2[t], h, w2[t]))  # (B, D)
    return torch.stack(outs, dim=1)  # (B, T, D)


def per_token_ffn_bmm(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """Fused: every token's layer in one batched matmul. x [B, T, D] -> [B, T, D]."""
    xt = x.transpose(0, 1)  # (T, B, D)
    h = F.gelu(torch.baddbmm(b1.unsqueeze(1), xt, w1))  # (T, B, kD)
    y = torch.baddbmm(b2.unsqueeze(1), h, w2)  # (T, B, D)
    return y.transpose(0, 1)  # (B, T, D)


def _grouped_mm_supported(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")


def per_token_ffn_grouped_mm(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """Fused with ``torch._grouped_mm`` (3D x 3D, one group per token) where supported."""
    if not _grouped_mm_supported(x):
        return per_token_ffn_bmm(x, w1, b1, w2, b2)
    xt = x.transpose(0, 1).contiguous()  # (T, B, D)
    h = F.gelu(torch._grouped_mm(xt, w1) + b1.unsqueeze(1))  # (T, B, kD)
    y = torch._grouped_mm(h, w2) + b2.unsqueeze(1)  # (T, B, D)
    return y.transpose(0, 1)


def per_token_ffn(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    kernel: str = "auto",
) -> torch.Tensor:
    """Dispatch to a per-token FFN kernel.

    Args:
        x: tokens [B, T, D].
        w1: [T, D, kD]; b1: [T, kD]; w2: [T, kD, D]; b2: [T, D].
        kernel: one of ``"auto"``, ``"loop"``, ``"bmm"``, ``"grouped_mm"``.

    Returns:
        [B, T, D].

    Example::

        >>> T, D, kD = 3, 4, 8
        >>> args = (torch.randn(2, T, D), torch.randn(T, D, kD), torch.randn(T, kD),
        ...         torch.randn(T, kD, D), torch.randn(T, D))
        >>> torch.allclose(per_token_ffn(*args, kernel="loop"),
        ...                per_token_ffn(*args, kernel="bmm"), atol=1e-5)
        True
    """
    chosen = choose_kernel(x, kernel)
    if chosen == "loop":
        return per_token_ffn_loop(x, w1, b1, w2, b2)
    if chosen == "bmm":
        return per_token_ffn_bmm(x, w1, b1, w2, b2)
    if chosen == "grouped_mm":
        return per_token_ffn_grouped_mm(x, w1, b1, w2, b2)
    raise ValueError(f"kernel ({kernel!r}) must be one of {list(KERNELS)}")
