"""Data sources yielding TorchRec ``Batch``es."""

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic_sequences import SyntheticSequenceData

__all__ = ["SyntheticClickData", "SyntheticSequenceData"]
