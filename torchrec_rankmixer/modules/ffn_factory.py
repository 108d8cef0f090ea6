"""Builds the token-wise FFN and token mixer a RankMixerBlock uses, from its config.

One place decides which module implements "PFFN" and "TokenMixing", so variants (shared
FFN, Sparse-MoE, ablation mixers) plug in without touching the block.
"""

import torch
from torch import nn

from torchrec_rankmixer.config import ROUTING_ABLATIONS, RankMixerConfig
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN, SharedFFN
from torchrec_rankmixer.modules.token_mixing_ablations import AllConcatMLP, AllShareFFN
from torchrec_rankmixer.modules.token_mixing import (
    MultiHeadTokenMixing,
    NoTokenMixing,
    SelfAttentionMixing,
)


def build_ffn(config: RankMixerConfig, device: torch.device | str | None = None) -> nn.Module:
    """The FFN of one block: [B, T, D] -> [B, T, D]."""
    if config.use_moe:
        return PerTokenSparseMoE.from_config(config, device=device)
    if config.token_mixer == "all_concat_mlp":
        return AllConcatMLP(config.num_tokens, config.d_model, config.ffn_mult, device=device)
    if config.token_mixer == "all_share":
        return AllShareFFN(config.num_tokens, config.d_model, config.ffn_mult, device=device)
    if config.ffn_type == "shared":
        return SharedFFN(config.d_model, config.ffn_mult, device=device)
    return PerTokenFFN(
        config.num_tokens, config.d_model, config.ffn_mult, kernel=config.kernel, device=device
    )


def build_token_mixer(config: RankMixerConfig, device: torch.device | str | None = None) -> nn.Module:
    """The token mixer of one block: [B, T, D] -> [B, H, T*D/H] (reshaped by the block)."""
    if config.token_mixer == "none" or config.token_mixer in ROUTING_ABLATIONS:
        return NoTokenMixing()  # routing ablations do their cross-token work in the FFN
    if config.token_mixer == "self_attention":
        mixer = SelfAttentionMixing(config.d_model, config.heads)
        return mixer.to(device) if device is not None else mixer
    return MultiHeadTokenMixing(config.num_tokens, config.d_model, config.heads, kernel=config.kernel)
