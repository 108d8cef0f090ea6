"""Tokenization over TorchRec embeddings (imports TorchRec)."""

from torchrec_rankmixer.features.grouping import TokenPlan, plan_tokens
from torchrec_rankmixer.features.tokenizer import SemanticTokenizer, feature_dims_of

__all__ = ["SemanticTokenizer", "TokenPlan", "feature_dims_of", "plan_tokens"]
