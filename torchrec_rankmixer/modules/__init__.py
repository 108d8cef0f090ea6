"""Pure-torch RankMixer modules (no TorchRec import)."""

from torchrec_rankmixer.modules.block import RankMixerBlock, RankMixerEncoder
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN, SharedFFN
from torchrec_rankmixer.modules.token_mixing import (
    MultiHeadTokenMixing,
    NoTokenMixing,
    SelfAttentionMixing,
)

__all__ = [
    "MultiHeadTokenMixing",
    "NoTokenMixing",
    "PerTokenFFN",
    "PerTokenSparseMoE",
    "RankMixerBlock",
    "RankMixerEncoder",
    "SelfAttentionMixing",
    "SharedFFN",
]
