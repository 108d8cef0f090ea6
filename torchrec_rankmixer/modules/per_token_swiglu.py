"""Per-token SwiGLU FFN (pSwiGLU), the FFN of the TokenMixer-Large block."""

import math

import torch
from torch import nn

from torchrec_rankmixer.config import TML_DOWN_INIT_SCALE
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.per_token_swiglu import per_token_swiglu
from torchrec_rankmixer.utils.checks import check_float, check_positive_int


def init_swiglu_weights(w_in: torch.Tensor, w_out: torch.Tensor, down_init_scale: float) -> None:
    """nn.Linear's default weight init (uniform in ±1/sqrt(fan_in)) for the gate and up
    projections ``w_in [..., D, 2h]``; the same times ``down_init_scale`` for the down
    projection ``w_out [..., h, D]`` (TokenMixer-Large's small init: each FFN starts
    near zero, so each residual block starts near the identity)."""
    bound_in = 1.0 / math.sqrt(w_in.shape[-2])
    nn.init.uniform_(w_in, -bound_in, bound_in)
    bound_out = down_init_scale / math.sqrt(w_out.shape[-2])
    nn.init.uniform_(w_out, -bound_out, bound_out)


class PerTokenSwiGLU(nn.Module):
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
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("d_model", d_model), ("hidden_dim", hidden_dim)):
            check_positive_int(name, value)
        check_float("down_init_scale", down_init_scale, 0.0, float("inf"), "[)")
        self.num_tokens, self.d_model, self.hidden_dim = num_tokens, d_model, hidden_dim
        self.down_init_scale = float(down_init_scale)
        self.kernel = check_kernel("kernel", kernel)
        self.w_in = nn.Parameter(torch.empty(num_tokens, d_model, 2 * hidden_dim, device=device))
        self.w_out = nn.Parameter(torch.empty(num_tokens, hidden_dim, d_model, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.w_in.is_meta:
            return
        init_swiglu_weights(self.w_in, self.w_out, self.down_init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_token_swiglu(x, self.w_in, self.w_out, kernel=self.kernel)  # (B, T, D)
