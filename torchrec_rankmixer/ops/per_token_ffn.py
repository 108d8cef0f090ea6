"""Per-token FFN kernels: T independent 2-layer GELU MLPs applied to T tokens.

Weights: w1 [T, D, kD], b1 [T, kD], w2 [T, kD, D], b2 [T, D]. Input x [B, T, D] ->
output [B, T, D]. Token t uses only its own weights:
``y[:, t] = GELU(x[:, t] @ w1[t] + b1[t]) @ w2[t] + b2[t]``.

Kernels (all give the same result; parity is tested forward and backward):

- ``"loop"``: the readable reference, a Python loop of ``addmm`` over tokens.
- ``"bmm"``: all tokens in one ``baddbmm`` per layer on a [T, B, D] layout.
- ``"grouped_mm"``: ``torch._grouped_mm`` (bf16 on CUDA Hopper+; falls back to bmm
  where the op rejects the dtype/device).
- ``"auto"``: the kernel measured fastest for the input's device, dtype, batch size
  and grad mode (docs/benchmarks.md; today ``"bmm"`` everywhere, see
  :func:`choose_kernel`).
"""

import torch
import torch.nn.functional as F

KERNELS = ("auto", "loop", "bmm", "grouped_mm")

# Measured side by side on the 2-core CPU dev box (benchmarks/bench_ffn_kernels.py,
# docs/benchmarks.md "PerTokenFFN kernels"): at T=16, D=128, k=4 and B in {1, 64, 512,
# 4096}, fp32 and bf16, forward and forward+backward, the batched kernel beat the loop
# in every cell (the loop's backward zero-fills a full [T, D, kD] gradient per token
# slice). The earlier guess "loop wins for fp32 training at B >= 128" did not reproduce,
# so "auto" is "bmm" on every device, dtype, batch size and grad mode (the former
# CPU_LOOP_MIN_BATCH threshold is gone).


def choose_kernel(x: torch.Tensor, requested: str) -> str:
    """Resolve ``"auto"`` to a concrete kernel for this input.

    Rule (from the measurements in docs/benchmarks.md): ``"bmm"`` on CPU and CUDA, for
    fp32 and bf16, any batch size, with or without autograd; the loop was never faster.
    ``"grouped_mm"`` is only used when asked for (it needs bf16 on CUDA and falls back to
    bmm elsewhere). The rule needs no batch size, so FX tracing and TorchScript see the
    same choice. Explicit kernels pass through unchanged.

    Args:
        x: tokens [B, T, D] (its device, dtype and batch size drive the choice).
        requested: a kernel name or ``"auto"``.

    Example::

        >>> choose_kernel(torch.randn(4096, 4, 8, requires_grad=True), "auto")
        'bmm'
        >>> choose_kernel(torch.randn(2, 4, 8), "loop")
        'loop'
    """
    if requested != "auto":
        return requested
    return "bmm"  # x is unused today; it stays in the signature for per-input rules


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
