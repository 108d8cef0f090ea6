"""RankMixerBlock (Eq. 1) and RankMixerEncoder (L blocks of the configured type + pooling)."""

import torch
from torch import nn

from torchrec_rankmixer.config import TOKENMIXER_LARGE, RankMixerConfig
from torchrec_rankmixer.modules.ffn_factory import build_ffn, build_token_mixer
from torchrec_rankmixer.modules.moe.dtsi import clear_dtsi_paths, draw_dtsi_paths, moe_layers
from torchrec_rankmixer.modules.tokenmixer_large import (
    GlobalToken,
    TokenMixerLargeBlock,
    inter_residual_sources,
    rms_norm,
)


def _norm(config: RankMixerConfig, device: torch.device | str | None) -> nn.Module:
    return nn.LayerNorm(config.d_model, device=device) if config.layer_norm else nn.Identity()


class RankMixerBlock(nn.Module):
    """One RankMixer layer.

    Post-LN (paper): ``S = LN(TokenMixing(X) + X)``; ``X' = LN(PFFN(S) + S)``.
    Pre-LN: ``S = X + TokenMixing(LN(X))``; ``X' = S + PFFN(LN(S))``.
    ``residual=False`` / ``layer_norm=False`` in the config drop the skips / norms
    (ablations). Dropout applies to the FFN output.

    Args:
        config: the :class:`RankMixerConfig`.
        device: where to allocate parameters.

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> cfg = RankMixerConfig(d_model=16, num_tokens=4, num_layers=1)
        >>> RankMixerBlock(cfg)(torch.randn(2, 4, 16)).shape
        torch.Size([2, 4, 16])
    """

    def __init__(self, config: RankMixerConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.pre_ln = config.ln_style == "pre"
        self.residual = config.residual
        self.mixer = build_token_mixer(config, device)
        self.ffn = build_ffn(config, device)
        self.norm1 = _norm(config, device)
        self.norm2 = _norm(config, device)
        self.dropout = nn.Dropout(config.dropout)

    def _skip(self, update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return update + x if self.residual else update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (B, T, D)
        if self.pre_ln:
            s = self._skip(self.mixer(self.norm1(x)).reshape(shape), x)
            return self._skip(self.dropout(self.ffn(self.norm2(s))), s)
        s = self.norm1(self._skip(self.mixer(x).reshape(shape), x))  # (B, T, D)
        return self.norm2(self._skip(self.dropout(self.ffn(s)), s))  # (B, T, D)


class RankMixerEncoder(nn.Module):
    """L blocks (``config.block``: :class:`RankMixerBlock` or
    :class:`~torchrec_rankmixer.modules.tokenmixer_large.TokenMixerLargeBlock`), an
    optional final norm (LayerNorm; RMSNorm for TokenMixer-Large), then pooling.

    TokenMixer-Large also adds its inter-layer residuals between blocks and, with
    ``tml_global_token``, appends the global token before the first block and drops it
    after the last (modules/tokenmixer_large.py).

    Args:
        config: the :class:`RankMixerConfig`.
        device: where to allocate parameters (``"meta"`` works).

    Shapes:
        x: [B, T, D] -> [B, D] (``pooling="mean"``) or [B, T*D] (``"flatten"``).

    Example::

        >>> cfg = RankMixerConfig(d_model=16, num_tokens=4, num_layers=2)
        >>> enc = RankMixerEncoder(cfg)
        >>> enc(torch.randn(3, 4, 16)).shape
        torch.Size([3, 16])
        >>> sum(p.numel() for p in enc.parameters()) == cfg.param_count(exact=True)
        True
    """

    def __init__(self, config: RankMixerConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        tml = config.block == TOKENMIXER_LARGE
        block = TokenMixerLargeBlock if tml else RankMixerBlock
        self.blocks = nn.ModuleList(block(config, device) for _ in range(config.num_layers))
        self.global_token = (
            GlobalToken(config.num_tokens, config.d_model, device) if config.tml_global_token else None
        )
        self.inter_residual = inter_residual_sources(config)  # {block: stream index}
        final_norm = rms_norm(config.d_model, device) if tml else nn.LayerNorm(config.d_model, device=device)
        self.final_norm = final_norm if config.final_norm else nn.Identity()
        self.mean_pool = config.pooling == "mean"

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after all blocks (and the final norm), before pooling: [B, T, D].

        In training, a Sparse-MoE model draws each sample's DTSI path once here, for
        all its layers (docs/moe.md, "Path draw").
        """
        # symbolic tracing (TorchRec's pipelines trace the training model) sees no draw
        sharing = self.training and not torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        moes = moe_layers(self.blocks) if sharing else []
        draw_dtsi_paths(moes, x)
        if self.global_token is not None:
            x = self.global_token(x)  # (B, T+1, D)
        stream = [x]  # kept only while inter-layer residuals read it
        try:
            for i, block in enumerate(self.blocks):
                x = block(x)  # (B, T, D)
                if i in self.inter_residual:
                    x = x + stream[self.inter_residual[i]]
                if self.inter_residual:
                    stream.append(x)
        finally:
            clear_dtsi_paths(moes)
        if self.global_token is not None:
            x = x[:, : self.config.num_tokens]  # (B, T, D)
        return self.final_norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encode(x)  # (B, T, D)
        if self.mean_pool:
            return x.mean(dim=1)  # (B, D)
        return x.flatten(1)  # (B, T*D)
