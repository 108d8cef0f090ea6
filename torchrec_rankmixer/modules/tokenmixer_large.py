"""The TokenMixer-Large block (Jiang et al., arXiv 2602.06563, 2026), RankMixer's successor.

A block of the same encoder (``RankMixerConfig(block="tokenmixer_large")``): tokens
[B, T, D] in and out. The paper's points and the choices made here (docs/configuration.md,
"TokenMixer-Large block", keeps the same list):

- **Mixing and reverting.** RankMixer adds the mixed tokens to the unmixed input
  (``LN(Mix(X) + X)``), so token t's residual carries another token's features. Here the
  per-token FFN of the mixed space runs *with its residual in the mixed space*, then the
  inverse permutation (Revert) brings every element back to its token, and a second
  per-token FFN runs in the token space. Mixing uses H heads, so the mixed space has H
  tokens of width W = T*D/H; Revert is mixing with T heads (ops/token_mixing.py).
- **Pre-RMSNorm** before each FFN (``torch.nn.RMSNorm``, eps 1e-6, learned scale).
- **pSwiGLU**: per-token SwiGLU FFNs without biases, hidden k*W (:class:`PerTokenSwiGLU`).
- **Small-init down projection** (``tml_down_init_scale``, default 0.01 times nn.Linear's
  init), so each block starts near the identity.
- **Inter-layer residuals** (``tml_inter_residual_every``, default 2): after every n-th
  block except the last, the encoder adds the stream of n blocks earlier
  (:func:`inter_residual_sources`). Not here: the paper's auxiliary losses on those
  layers (the training loop has no auxiliary-loss path).
- **Global token** (``tml_global_token``, off by default): a learned linear map of all T
  input tokens, appended as token T+1 (the paper builds it from all feature groups, as
  BERT's [CLS]); every block mixes it with the others; it is dropped before pooling, so
  the encoder's output width does not change (:class:`GlobalToken`).
- **Sparse-MoE** (``use_moe=True``): both FFNs become per-token MoEs of pSwiGLU experts
  with a shared expert (modules/moe/swiglu.py).

Block equations (our choice where the sources differ: each sub-layer adds its update to
the stream it reads, as a pre-norm Transformer does, so the mixing-space FFN's update
stays on the residual stream; one public re-implementation instead adds the second FFN's
output to the block input X, which drops the first FFN's update from the stream):

    H  = Mix(X)                       # (B, H, W)
    H' = H + F_mix(RMSNorm(H))        # (B, H, W)   per-head pSwiGLU
    R  = Revert(H')                   # (B, T, D)   = X + Revert(F_mix(...))
    X' = R + F_tok(RMSNorm(R))        # (B, T, D)   per-token pSwiGLU
"""

from typing import Dict

import torch
from torch import nn

from torchrec_rankmixer.config import TOKENMIXER_LARGE, RankMixerConfig
from torchrec_rankmixer.modules.moe.swiglu import PerTokenSwiGLUMoE
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.ops.token_mixing import token_mixing

RMS_NORM_EPS = 1e-6


def rms_norm(width: int, device: torch.device | str | None = None) -> nn.Module:
    """The block's RMSNorm over the last dim (learned scale, no bias).

    Example::

        >>> y = rms_norm(4)(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
        >>> torch.allclose(y, torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
        True
    """
    return nn.RMSNorm(width, eps=RMS_NORM_EPS, device=device)


def build_swiglu_ffn(
    config: RankMixerConfig, num_tokens: int, width: int, device: torch.device | str | None = None
) -> nn.Module:
    """One FFN of the block on ``num_tokens`` tokens of ``width``: a :class:`PerTokenSwiGLU`
    of hidden ``ffn_mult * width``, or with ``use_moe`` a :class:`PerTokenSwiGLUMoE`."""
    if config.use_moe:
        return PerTokenSwiGLUMoE.from_config(config, num_tokens, width, device)
    return PerTokenSwiGLU(num_tokens, width, config.ffn_mult * width, config.tml_down_init_scale,
                          kernel=config.kernel, device=device)


class GlobalToken(nn.Module):
    """Appends a global token ``g = Linear(flatten(X))``, computed from all T tokens.

    Args:
        num_tokens: T (the tokens it reads).
        d_model: D.
        device: where to allocate.

    Shapes:
        x: [B, T, D] -> [B, T+1, D] (the global token last).

    Example::

        >>> GlobalToken(num_tokens=3, d_model=4)(torch.randn(2, 3, 4)).shape
        torch.Size([2, 4, 4])
    """

    def __init__(self, num_tokens: int, d_model: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.proj = nn.Linear(num_tokens * d_model, d_model, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.proj(x.flatten(1))  # (B, D)
        return torch.cat([x, g.unsqueeze(1)], dim=1)  # (B, T+1, D)


class TokenMixerLargeBlock(nn.Module):
    """One TokenMixer-Large block (module docstring): mix, per-head pSwiGLU with its
    residual in the mixed space, revert, per-token pSwiGLU; pre-RMSNorm before each FFN.

    ``residual=False`` / ``layer_norm=False`` in the config drop the skips / norms
    (ablations, as for :class:`RankMixerBlock`); dropout applies to each FFN output.

    Args:
        config: a :class:`RankMixerConfig` with ``block="tokenmixer_large"``; the block
            runs on ``num_tokens`` tokens, plus one with ``tml_global_token``.
        device: where to allocate parameters (``"meta"`` works).

    Shapes:
        x: [B, T, D] -> [B, T, D] (T + 1 tokens with the global token). Inside: H heads of
        width W = T*D/H.

    Example::

        >>> cfg = RankMixerConfig(d_model=16, num_tokens=4, num_layers=1, block="tokenmixer_large")
        >>> block = TokenMixerLargeBlock(cfg)
        >>> x = torch.randn(2, 4, 16)
        >>> block(x).shape
        torch.Size([2, 4, 16])
        >>> _ = [torch.nn.init.zeros_(f.w_out) for f in (block.ffn_mix, block.ffn_tok)]
        >>> torch.equal(block(x), x)  # zero FFN outputs: mixing then reverting is the identity
        True
    """

    def __init__(self, config: RankMixerConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        T, D, H = config.num_tokens + int(config.tml_global_token), config.d_model, config.heads
        width = T * D // H
        self.num_tokens, self.num_heads, self.kernel = T, H, config.kernel
        self.residual = config.residual
        self.norm_mix = rms_norm(width, device) if config.layer_norm else nn.Identity()
        self.ffn_mix = build_swiglu_ffn(config, H, width, device)
        self.norm_tok = rms_norm(D, device) if config.layer_norm else nn.Identity()
        self.ffn_tok = build_swiglu_ffn(config, T, D, device)
        self.dropout = nn.Dropout(config.dropout)

    def _skip(self, update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return update + x if self.residual else update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = token_mixing(x, self.num_heads, self.kernel)  # (B, H, W)
        h = self._skip(self.dropout(self.ffn_mix(self.norm_mix(h))), h)  # (B, H, W)
        r = token_mixing(h, self.num_tokens, self.kernel)  # revert: (B, T, D)
        return self._skip(self.dropout(self.ffn_tok(self.norm_tok(r))), r)  # (B, T, D)


def inter_residual_sources(config: RankMixerConfig) -> Dict[int, int]:
    """Where the encoder adds inter-layer residuals: ``{block i: stream j}`` means the
    output of block i (0-based) gets ``stream[j]`` added, with stream[0] the encoder's
    input tokens and stream[j] the output of block j-1 (after its own inter-layer residual).

    With n = ``tml_inter_residual_every`` > 0, block l (1-based) with l % n == 0 receives
    the stream of n blocks earlier, except the last block (the paper keeps low-level
    features out of the layer the head reads). {} for the RankMixer block or n = 0.

    Example::

        >>> cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=6, block="tokenmixer_large")
        >>> inter_residual_sources(cfg)
        {1: 0, 3: 2}
    """
    every = config.tml_inter_residual_every
    if config.block != TOKENMIXER_LARGE or every == 0:
        return {}
    return {l - 1: l - every for l in range(every, config.num_layers, every)}
