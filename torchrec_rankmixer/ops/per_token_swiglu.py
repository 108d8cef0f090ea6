"""Per-token SwiGLU (pSwiGLU) kernels: T independent SwiGLU FFNs without biases
(TokenMixer-Large's per-token FFN).

Weights: w_in [T, D, 2h] (token t's gate projection in columns ``[:h]``, its up
projection in ``[h:]``) and w_out [T, h, D] (the down projection). Input x [B, T, D]
-> output [B, T, D]; token t uses only its own weights:

    y[:, t] = (SiLU(x[:, t] @ w_in[t, :, :h]) * (x[:, t] @ w_in[t, :, h:])) @ w_out[t]

Kernels (ops/kernels.py; all give the same result, parity is tested forward and backward):

- ``"reference"``: the definition, a Python loop over tokens with the gate and up
  projections written separately.
- ``"batched"``: every token in one ``bmm`` per projection on a [T, B, D] layout.
- ``"grouped_mm"``: ``torch._grouped_mm`` (bf16 on CUDA Hopper+; ``"batched"`` elsewhere).
- ``"auto"``: the rule of :func:`~torchrec_rankmixer.ops.per_token_ffn.choose_kernel`,
  measured on the GELU per-token FFN, whose matmuls have the same batched shape.
"""

import torch
import torch.nn.functional as F

from torchrec_rankmixer.ops.kernels import Kernel
from torchrec_rankmixer.ops.per_token_ffn import _grouped_mm_supported, choose_kernel


def swiglu(a: torch.Tensor) -> torch.Tensor:
    """SwiGLU of stacked pre-activations: ``a [..., 2h]`` (gate, then up) -> ``[..., h]``.

    Example::

        >>> a = torch.tensor([[0.0, 1.0, 5.0, 7.0]])  # gates (0, 1), ups (5, 7)
        >>> torch.allclose(swiglu(a), torch.tensor([[0.0, 7.0 * torch.sigmoid(torch.tensor(1.0))]]))
        True
    """
    gate, up = a.chunk(2, dim=-1)
    return F.silu(gate) * up


def per_token_swiglu_reference(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """The definition, one token at a time (slow; for tests and reading). x [B, T, D] -> [B, T, D]."""
    hidden = w_out.shape[1]
    outs = []
    for t in range(w_in.shape[0]):
        gate = x[:, t] @ w_in[t, :, :hidden]  # (B, h)
        up = x[:, t] @ w_in[t, :, hidden:]  # (B, h)
        outs.append((F.silu(gate) * up) @ w_out[t])  # (B, D)
    return torch.stack(outs, dim=1)  # (B, T, D)


def per_token_swiglu_batched(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """Every token's projections in one batched matmul each. x [B, T, D] -> [B, T, D]."""
    xt = x.transpose(0, 1)  # (T, B, D)
    hidden = swiglu(torch.bmm(xt, w_in))  # (T, B, h)
    return torch.bmm(hidden, w_out).transpose(0, 1)  # (B, T, D)


def per_token_swiglu_grouped_mm(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """``torch._grouped_mm`` (3D x 3D, one group per token) where supported, else batched."""
    if not _grouped_mm_supported(x):
        return per_token_swiglu_batched(x, w_in, w_out)
    xt = x.transpose(0, 1).contiguous()  # (T, B, D)
    hidden = swiglu(torch._grouped_mm(xt, w_in)).contiguous()  # (T, B, h)
    return torch._grouped_mm(hidden, w_out).transpose(0, 1)  # (B, T, D)


def per_token_swiglu(x: torch.Tensor, w_in: torch.Tensor, w_out: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """Dispatch to a pSwiGLU kernel.

    Args:
        x: tokens [B, T, D].
        w_in: [T, D, 2h] (gate columns, then up columns); w_out: [T, h, D].
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"``.

    Returns:
        [B, T, D].

    Example::

        >>> T, D, h = 3, 4, 8
        >>> x, w_in, w_out = torch.randn(2, T, D), torch.randn(T, D, 2 * h), torch.randn(T, h, D)
        >>> torch.allclose(per_token_swiglu(x, w_in, w_out, kernel="reference"),
        ...                per_token_swiglu(x, w_in, w_out, kernel="batched"), atol=1e-5)
        True
    """
    chosen = choose_kernel(x, kernel)
    if chosen == Kernel.REFERENCE:
        return per_token_swiglu_reference(x, w_in, w_out)
    if chosen == Kernel.GROUPED_MM:
        return per_token_swiglu_grouped_mm(x, w_in, w_out)
    return per_token_swiglu_batched(x, w_in, w_out)
