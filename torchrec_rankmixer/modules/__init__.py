"""Pure-torch RankMixer and TokenMixer-Large modules (no TorchRec import)."""

from torchrec_rankmixer.modules.block import RankMixerBlock, RankMixerEncoder
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN, SharedFFN
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.modules.token_mixing import (
    MultiHeadTokenMixing,
    NoTokenMixing,
    SelfAttentionMixing,
)
from torchrec_rankmixer.modules.tokenmixer_large import TokenMixerLargeBlock

__all__ = [
    "MultiHeadTokenMixing",
    "NoTokenMixing",
    "PerTokenFFN",
    "PerTokenSparseMoE",
    "PerTokenSwiGLU",
    "RankMixerBlock",
    "RankMixerEncoder",
    "SelfAttentionMixing",
    "SharedFFN",
    "TokenMixerLargeBlock",
]
