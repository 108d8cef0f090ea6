"""Data sources yielding TorchRec ``Batch``es."""

from torchrec_rankmixer.data.synthetic import SyntheticClickData

__all__ = ["SyntheticClickData"]
