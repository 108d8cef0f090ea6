"""Per-token FFN (RankMixer Eq. 6-9) and the shared-FFN ablation."""

import math

import torch
from torch import nn

from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.per_token_ffn import per_token_ffn
from torchrec_rankmixer.utils.checks import check_positive_int


def _init_linear_stack(weight: torch.Tensor, bias: torch.Tensor, fan_in: int) -> None:
    """nn.Linear's default init, applied to every token's slice."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)
    nn.init.uniform_(bias, -bound, bound)


class PerTokenFFN(nn.Module):
    """T independent GELU FFNs, token t using its own W1 [D, kD], b1, W2 [kD, D], b2.

    FLOPs equal one shared FFN's; parameters are T times larger. All T FFNs run as one
    batched computation (``kernel="batched"``) or as the readable reference loop
    (``kernel="reference"``); ``"auto"`` picks the faster per device/dtype/batch size.

    Args:
        num_tokens: T.
        d_model: D.
        ffn_mult: k (hidden width kD).
        kernel: ``"auto"``, ``"reference"``, ``"batched"`` or ``"grouped_mm"`` (ops/kernels.py).
        device: where to allocate the weights (``"meta"`` works).

    Shapes:
        x: [B, T, D] -> [B, T, D]. Weights: w1 [T, D, kD], b1 [T, kD], w2 [T, kD, D], b2 [T, D].

    Example::

        >>> ffn = PerTokenFFN(num_tokens=4, d_model=8, ffn_mult=2)
        >>> ffn(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
        >>> sum(p.numel() for p in ffn.parameters()) == 4 * (8 * 16 + 16 + 16 * 8 + 8)
        True
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        ffn_mult: int = 4,
        kernel: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("d_model", d_model), ("ffn_mult", ffn_mult)):
            check_positive_int(name, value)
        kernel = check_kernel("kernel", kernel)
        hidden = ffn_mult * d_model
        self.num_tokens, self.d_model, self.hidden_dim, self.kernel = num_tokens, d_model, hidden, kernel
        self.w1 = nn.Parameter(torch.empty(num_tokens, d_model, hidden, device=device))
        self.b1 = nn.Parameter(torch.empty(num_tokens, hidden, device=device))
        self.w2 = nn.Parameter(torch.empty(num_tokens, hidden, d_model, device=device))
        self.b2 = nn.Parameter(torch.empty(num_tokens, d_model, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.w1.is_meta:
            return
        _init_linear_stack(self.w1, self.b1, self.d_model)
        _init_linear_stack(self.w2, self.b2, self.hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_token_ffn(x, self.w1, self.b1, self.w2, self.b2, kernel=self.kernel)


class SharedFFN(nn.Module):
    """One GELU FFN shared by all tokens (the paper's "shared FFN" ablation).

    Args:
        d_model: D.
        ffn_mult: k.

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> SharedFFN(d_model=8, ffn_mult=2)(torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
    """

    def __init__(self, d_model: int, ffn_mult: int = 4, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model, device=device),
            nn.GELU(),
            nn.Linear(ffn_mult * d_model, d_model, device=device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
