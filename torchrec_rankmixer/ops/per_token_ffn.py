"""Per-token FFN kernels: T independent 2-layer GELU MLPs applied to T tokens.

Weights: w1 [T, D, kD], b1 [T, kD], w2 [T, kD, D], b2 [T, D]. Input x [B, T, D] ->
output [B, T, D]. Token t uses only its own weights:
``y[:, t] = GELU(x[:, t] @ w1[t] + b1[t]) @ w2[t] + b2[t]``.

Kernels (ops/kernels.py; all give the same result, parity is tested forward and backward):

- ``"reference"``: the readable definition, a Python loop of ``addmm`` over tokens.
- ``"batched"``: all tokens in one ``baddbmm`` per layer on a [T, B, D] layout.
- ``"grouped_mm"``: ``torch._grouped_mm`` (bf16 on CUDA Hopper+; falls back to
  ``"batched"`` where the op rejects the dtype/device).
- ``"auto"``: the kernel measured fastest for the input's device, dtype, batch size
  and grad mode (docs/benchmarks.md; ``"batched"`` except fp32 CPU inference at large
  batch, see :func:`choose_kernel`).
"""

import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops.kernels import Kernel, check_kernel

# Measured side by side on the 2-core CPU dev box (benchmarks/bench_ffn_kernels.py,
# docs/benchmarks.md "PerTokenFFN kernels"; T=16, D=128, k=4). bmm beat the loop in
# every training (forward+backward) cell and in every bf16 cell, at B in {1, 64, 512,
# 4096}; the loop's backward zero-fills a full [T, D, kD] gradient per token slice.
# The one exception: fp32 forward without autograd at large batch, where the loop keeps
# each token's [B, kD] hidden in cache (loop/bmm time 0.70 at B=1024, 0.53 at 2048,
# 0.41-0.74 at 4096; a tie at 512). So the loop ("reference") is chosen only there.
CPU_FP32_INFERENCE_LOOP_MIN_BATCH = 1024


def _fx_or_script() -> bool:
    if torch.jit.is_scripting():
        return True
    tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None)
    return bool(tracing()) if tracing is not None else torch.fx._symbolic_trace.is_fx_tracing()


def choose_kernel(x: torch.Tensor, requested: str) -> str:
    """Resolve ``"auto"`` to a concrete kernel for this input.

    Rule (from the measurements in docs/benchmarks.md): ``"reference"`` (the per-token
    loop) for fp32 on CPU with autograd off (``torch.no_grad``/inference) and
    B >= ``CPU_FP32_INFERENCE_LOOP_MIN_BATCH``; ``"batched"`` everywhere else (training,
    bf16, small batches, CUDA). ``"grouped_mm"`` is only used when asked for (it needs
    bf16 on CUDA and falls back to ``"batched"`` elsewhere). Under FX tracing or
    TorchScript, where the batch size is symbolic, ``"batched"``. Explicit kernels pass
    through unchanged.

    Args:
        x: tokens [B, T, D] (its device, dtype and batch size drive the choice).
        requested: a kernel name (ops/kernels.py).

    Example::

        >>> choose_kernel(torch.randn(4096, 4, 8, requires_grad=True), "auto")
        'batched'
        >>> with torch.no_grad():
        ...     choose_kernel(torch.randn(4096, 4, 8), "auto")
        'reference'
        >>> choose_kernel(torch.randn(2, 4, 8), "reference")
        'reference'
    """
    requested = check_kernel("kernel", requested)
    if requested != Kernel.AUTO:
        return requested
    if _fx_or_script():
        return Kernel.BATCHED.value
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and x.shape[0] >= CPU_FP32_INFERENCE_LOOP_MIN_BATCH
    ):
        return Kernel.REFERENCE.value
    return Kernel.BATCHED.value


def per_token_ffn_reference(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """Reference: one small MLP per token, in a Python loop. x [B, T, D] -> [B, T, D]."""
    xt = x.transpose(0, 1).contiguous()  # (T, B, D): each token's rows contiguous
    outs = []
    for t in range(w1.shape[0]):
        h = F.gelu(torch.addmm(b1[t], xt[t], w1[t]))  # (B, kD)
        outs.append(torch.addmm(b2[t], h, w2[t]))  # (B, D)
    return torch.stack(outs, dim=1)  # (B, T, D)


def per_token_ffn_batched(
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
        return per_token_ffn_batched(x, w1, b1, w2, b2)
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
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        [B, T, D].

    Example::

        >>> T, D, kD = 3, 4, 8
        >>> args = (torch.randn(2, T, D), torch.randn(T, D, kD), torch.randn(T, kD),
        ...         torch.randn(T, kD, D), torch.randn(T, D))
        >>> torch.allclose(per_token_ffn(*args, kernel="reference"),
        ...                per_token_ffn(*args, kernel="batched"), atol=1e-5)
        True
    """
    chosen = choose_kernel(x, kernel)
    if chosen == Kernel.REFERENCE:
        return per_token_ffn_reference(x, w1, b1, w2, b2)
    if chosen == Kernel.GROUPED_MM:
        return per_token_ffn_grouped_mm(x, w1, b1, w2, b2)
    return per_token_ffn_batched(x, w1, b1, w2, b2)
