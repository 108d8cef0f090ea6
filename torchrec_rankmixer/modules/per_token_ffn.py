"""Per-token FFN (RankMixer Eq. 6-9) and the shared-FFN ablation."""

import math
from typing import Optional, Tuple

import torch
from torch import nn

from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.per_token_ffn import per_token_ffn
from torchrec_rankmixer.utils.checks import check_positive_ints


def init_linear_stack(weight: torch.Tensor, bias: Optional[torch.Tensor] = None, scale: float = 1.0) -> None:
    """nn.Linear's default init, applied to every slice of a stack: ``weight [..., fan_in, out]``
    uniform in ±scale/sqrt(fan_in), ``bias [..., out]`` uniform in ±1/sqrt(fan_in).

    Example::

        >>> w = torch.empty(3, 4, 5)
        >>> init_linear_stack(w, scale=0.1)
        >>> bool(w.abs().max() <= 0.1 / 2)
        True
    """
    fan_in = weight.shape[-2]
    nn.init.uniform_(weight, -scale / math.sqrt(fan_in), scale / math.sqrt(fan_in))
    if bias is not None:
        nn.init.uniform_(bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))


class GELUFFNStack(nn.Module):
    """GELU FFNs ``GELU(x W1 + b1) W2 + b2`` stacked over the leading dims ``lead`` (one per
    token, or one per token and expert): w1 [*lead, D, h], b1 [*lead, h], w2 [*lead, h, D],
    b2 [*lead, D], each slice initialised as nn.Linear. The weights of :class:`PerTokenFFN`
    and of the Sparse-MoE's GELU experts (modules/moe/experts.py); they add the forward.

    Example::

        >>> [tuple(p.shape) for p in GELUFFNStack((3, 2), d_model=4, hidden=8).parameters()]
        [(3, 2, 4, 8), (3, 2, 8), (3, 2, 8, 4), (3, 2, 4)]
    """

    def __init__(
        self, lead: Tuple[int, ...], d_model: int, hidden: int, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.w1 = nn.Parameter(torch.empty(*lead, d_model, hidden, device=device))
        self.b1 = nn.Parameter(torch.empty(*lead, hidden, device=device))
        self.w2 = nn.Parameter(torch.empty(*lead, hidden, d_model, device=device))
        self.b2 = nn.Parameter(torch.empty(*lead, d_model, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init, per slice (nothing to do on the meta device)."""
        if not self.w1.is_meta:
            init_linear_stack(self.w1, self.b1)
            init_linear_stack(self.w2, self.b2)


class PerTokenFFN(GELUFFNStack):
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
        check_positive_ints({"num_tokens": num_tokens, "d_model": d_model, "ffn_mult": ffn_mult})
        kernel = check_kernel("kernel", kernel)
        super().__init__((num_tokens,), d_model, ffn_mult * d_model, device)
        self.num_tokens, self.hidden_dim, self.kernel = num_tokens, ffn_mult * d_model, kernel

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
