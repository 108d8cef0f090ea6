"""Models over TorchRec embeddings (imports TorchRec): the drop-in ``DLRM_RankMixer``, its
heads, its input checks and its serialisable recipe ``ModelSpec``."""

from torchrec_rankmixer.models.defaults import default_config
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer, SparseArch
from torchrec_rankmixer.models.heads import TaskTowers
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.models.table_spec import TableSpec

__all__ = ["DLRM_RankMixer", "ModelSpec", "SparseArch", "TableSpec", "TaskTowers", "default_config"]
