"""Models over TorchRec embeddings (imports TorchRec)."""

from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer, SparseArch, default_config

__all__ = ["DLRM_RankMixer", "SparseArch", "default_config"]
