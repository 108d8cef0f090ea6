"""Token mixers: the paper's parameter-free multi-head mixing and the ablation mixers."""

import torch
from torch import nn

from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.token_mixing import token_mixing


class MultiHeadTokenMixing(nn.Module):
    """Parameter-free multi-head token mixing (RankMixer Eq. 3-4).

    Each token splits into H heads of width D/H; output token h concatenates head h of
    every input token. With H = T (paper, strict) the output keeps the input's shape
    [B, T, D]. With general H the output is [B, H, T*D/H]; :class:`RankMixerBlock`
    reshapes it row-major to [B, T, D] for the residual. The op is a permutation of
    the input's elements.

    Args:
        num_tokens: T.
        d_model: D.
        num_heads: H (must divide D); ``None`` means H = T.
        kernel: one of ops/kernels.py's ``KERNELS`` (``"reference"``: literal loops;
            any other: one reshape/transpose).

    Shapes:
        x: [B, T, D] -> [B, H, T*D/H].

    Example::

        >>> mix = MultiHeadTokenMixing(num_tokens=4, d_model=8)
        >>> x = torch.randn(2, 4, 8)
        >>> mix(x).shape
        torch.Size([2, 4, 8])
        >>> torch.equal(mix(x).flatten().sort().values, x.flatten().sort().values)
        True
    """

    def __init__(
        self, num_tokens: int, d_model: int, num_heads: int | None = None, kernel: str = "auto"
    ) -> None:
        super().__init__()
        heads = num_tokens if num_heads is None else num_heads
        if num_tokens < 1 or d_model < 1 or heads < 1:
            raise ValueError(
                f"num_tokens ({num_tokens}), d_model ({d_model}) and num_heads ({heads}) "
                "must be positive"
            )
        if d_model % heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({heads})")
        self.num_tokens = num_tokens
        self.d_model = d_model
        self.num_heads = heads
        self.kernel = check_kernel("kernel", kernel)

    @property
    def out_shape(self) -> tuple[int, int]:
        """(H, T*D/H): the per-sample output shape."""
        return self.num_heads, self.num_tokens * self.d_model // self.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_mixing(x, self.num_heads, self.kernel)  # (B, H, T*D/H)


class SelfAttentionMixing(nn.Module):
    """Self-attention in place of token mixing (the paper's ablation, +FLOPs, +params).

    Args:
        d_model: D.
        num_heads: attention heads H (must divide D).

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> SelfAttentionMixing(d_model=8, num_heads=2)(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


class NoTokenMixing(nn.Module):
    """Ablation "without token mixing": returns zeros so the block keeps only x.

    With the residual, ``LN(0 + x) = LN(x)``: each token then sees only itself.

    Example::

        >>> NoTokenMixing()(torch.ones(2, 3, 4)).abs().sum().item()
        0.0
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)
