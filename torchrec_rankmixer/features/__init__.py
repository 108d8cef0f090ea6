"""Tokenization over TorchRec embeddings, behaviour-sequence pooling, and managed-collision
id remapping (imports TorchRec)."""

from torchrec_rankmixer.features.grouping import TokenPlan, plan_tokens
from torchrec_rankmixer.features.managed_collision import ManagedCollisionRemapper
from torchrec_rankmixer.features.sequence import (
    MaxSequencePooling,
    MeanSequencePooling,
    SequenceFeatureConfig,
    TargetAttentionPooling,
)
from torchrec_rankmixer.features.sequence_arch import SequenceArch, build_sequence_arch, truncate_kjt
from torchrec_rankmixer.features.tokenizer import SemanticTokenizer, feature_dims_of

__all__ = [
    "ManagedCollisionRemapper",
    "MaxSequencePooling",
    "MeanSequencePooling",
    "SemanticTokenizer",
    "SequenceArch",
    "SequenceFeatureConfig",
    "TargetAttentionPooling",
    "TokenPlan",
    "build_sequence_arch",
    "feature_dims_of",
    "plan_tokens",
    "truncate_kjt",
]
