"""torchrec-rankmixer: RankMixer (ByteDance, CIKM 2025) for PyTorch and TorchRec.

The dense core (config, token mixing, per-token FFN, blocks, encoder) imports only
torch. Names that need TorchRec (tokenizer, models, data) load lazily on first use, so
``import torchrec_rankmixer`` works wherever torch does.

Example::

    >>> import torch
    >>> from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
    >>> enc = RankMixerEncoder(RankMixerConfig(d_model=32, num_tokens=4, num_layers=2))
    >>> enc(torch.randn(8, 4, 32)).shape
    torch.Size([8, 32])
"""

from importlib import import_module
from typing import Any

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.modules.deep import DeepConfig
from torchrec_rankmixer.modules import (
    MultiHeadTokenMixing,
    PerTokenFFN,
    PerTokenSparseMoE,
    PerTokenSwiGLU,
    RankMixerBlock,
    RankMixerEncoder,
    SharedFFN,
    TokenMixerLargeBlock,
)
from torchrec_rankmixer.version import __version__

_LAZY = {
    "SemanticTokenizer": "torchrec_rankmixer.features.tokenizer",
    "DLRM_RankMixer": "torchrec_rankmixer.models.dlrm_rankmixer",
    "ModelSpec": "torchrec_rankmixer.models.spec",
    "SyntheticClickData": "torchrec_rankmixer.data.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'torchrec_rankmixer' has no attribute {name!r}")


__all__ = [
    "DLRM_RankMixer",
    "DeepConfig",
    "ModelSpec",
    "MultiHeadTokenMixing",
    "PerTokenFFN",
    "PerTokenSparseMoE",
    "PerTokenSwiGLU",
    "RankMixerBlock",
    "RankMixerConfig",
    "RankMixerEncoder",
    "SemanticTokenizer",
    "SharedFFN",
    "SyntheticClickData",
    "TokenMixerLargeBlock",
    "__version__",
]
