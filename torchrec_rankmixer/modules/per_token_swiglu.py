"""Per-token SwiGLU FFN (pSwiGLU), the FFN of the TokenMixer-Large block."""

from typing import Tuple

import torch
from torch import nn

from torchrec_rankmixer.config import TML_DOWN_INIT_SCALE
from torchrec_rankmixer.modules.per_token_ffn import init_linear_stack
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.per_token_swiglu import per_token_swiglu
from torchrec_rankmixer.utils.checks import check_float, check_positive_ints


def init_swiglu_weights(w_in: torch.Tensor, w_out: torch.Tensor, down_init_scale: float) -> None:
    """nn.Linear's default weight init (uniform in ±1/sqrt(fan_in)) for the gate and up
    projections ``w_in [..., D, 2h]``; the same times ``down_init_scale`` for the down
    projection ``w_out [..., h, D]`` (TokenMixer-Large's small init: each FFN starts
    near zero, so each residual block starts near the identity)."""
    init_linear_stack(w_in)
    init_linear_stack(w_out, scale=down_init_scale)


class SwiGLUFFNStack(nn.Module):
    """Bias-free SwiGLU FFNs ``(SiLU(x Wg) * (x Wu)) Wd`` stacked over the leading dims
    ``lead`` (one per token, or one per token and expert): w_in [*lead, D, 2h] (gate columns,
    then up), w_out [*lead, h, D], initialised by :func:`init_swiglu_weights` with
    ``down_init_scale`` (>= 0). The weights of :class:`PerTokenSwiGLU` and of the
    Sparse-MoE's SwiGLU experts (modules/moe/swiglu.py); they add the forward.

    Example::

        >>> [tuple(p.shape) for p in SwiGLUFFNStack((3, 2), d_model=4, hidden=8).parameters()]
        [(3, 2, 4, 16), (3, 2, 8, 4)]
    """

    def __init__(
        self, lead: Tuple[int, ...], d_model: int, hidden: int,
        down_init_scale: float = TML_DOWN_INIT_SCALE, device: torch.device | str | None = None,
    ) -> None:
        check_float("down_init_scale", down_init_scale, 0.0, float("inf"), "[)")
        super().__init__()
        self.d_model, self.down_init_scale = d_model, float(down_init_scale)
        self.w_in = nn.Parameter(torch.empty(*lead, d_model, 2 * hidden, device=device))
        self.w_out = nn.Parameter(torch.empty(*lead, hidden, d_model, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """:func:`init_swiglu_weights` (nothing to do on the meta device)."""
        if not self.w_in.is_meta:
            init_swiglu_weights(self.w_in, self.w_out, self.down_init_scale)


class PerTokenSwiGLU(SwiGLUFFNStack):
    """T independent SwiGLU FFNs without biases: token t computes
    ``(SiLU(x Wg[t]) * (x Wu[t])) Wd[t]`` (TokenMixer-Large's pSwiGLU).

    The gate and up projections are stored stacked as ``w_in [T, D, 2h]`` (gate columns
    first) so that one batched matmul computes both; ``w_out [T, h, D]`` is the down
    projection, initialised small (``down_init_scale``).

    Args:
        num_tokens: T.
        d_model: D (the width of each token).
        hidden_dim: h, each token's hidden width (k*D in the TokenMixer-Large block).
        down_init_scale: factor on nn.Linear's init of the down projection, >= 0.
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"`` (ops/kernels.py).
        device: where to allocate the weights (``"meta"`` works).

    Shapes:
        x: [B, T, D] -> [B, T, D]. Weights: w_in [T, D, 2h], w_out [T, h, D].

    Example::

        >>> ffn = PerTokenSwiGLU(num_tokens=4, d_model=8, hidden_dim=16)
        >>> ffn(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
        >>> sum(p.numel() for p in ffn.parameters()) == 4 * 3 * 8 * 16
        True
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        hidden_dim: int,
        down_init_scale: float = TML_DOWN_INIT_SCALE,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        check_positive_ints({"num_tokens": num_tokens, "d_model": d_model, "hidden_dim": hidden_dim})
        super().__init__((num_tokens,), d_model, hidden_dim, down_init_scale, device)
        self.num_tokens, self.hidden_dim = num_tokens, hidden_dim
        self.kernel = check_kernel("kernel", kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_token_swiglu(x, self.w_in, self.w_out, kernel=self.kernel)  # (B, T, D)
