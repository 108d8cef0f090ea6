"""Feature preparation as tensor ops: raw ids and raw dense columns -> the model's inputs.

* Raw 64-bit ids are hashed (splitmix64, stable across runs and machines) or taken
  modulo into each feature's table, or kept as they are (``none``: must be in range;
  ``managed_collision``: any int64, remapped later by
  :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`).
* Dense features are normalised (``log1p`` of the value clamped at 0, as for Criteo) or,
  for features with a boundaries list, bucketised into ids and embedded as a sparse
  feature ``<name>_bucket`` with ``len(boundaries) + 1`` rows.

:class:`RawFeaturePrep` runs on every training batch (the file readers'
``data.features.FeaturePrep``) and export builds the same module into the serving
artifact, so training and serving run the same code.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from torchrec_rankmixer.utils.checks import check_choice

ID_TRANSFORMS: Tuple[str, ...] = ("hash", "mod", "none", "managed_collision")
DENSE_TRANSFORMS: Tuple[str, ...] = ("log1p", "none")

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_C1, _C2, _C3 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _lshr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 [N] (wrapping arithmetic) -> int64 [N].

    Example::

        >>> splitmix64(torch.tensor([0, 1])).tolist() == splitmix64(torch.tensor([0, 1])).tolist()
        True
    """
    z = x.to(torch.int64) + _C1
    z = (z ^ _lshr(z, 30)) * _C2
    z = (z ^ _lshr(z, 27)) * _C3
    return z ^ _lshr(z, 31)


def hash_ids(raw: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Raw int64 ids [N] -> ids in [0, num_buckets) [N] (stable splitmix64 hash).

    Example::

        >>> ids = hash_ids(torch.tensor([7, 2**62, -5]), 100)
        >>> bool(((ids >= 0) & (ids < 100)).all())
        True
    """
    return torch.remainder(splitmix64(raw), num_buckets)


class RawFeaturePrep(nn.Module):
    """Raw sparse ids and raw dense columns -> the model's inputs: the tensor half of
    :class:`FeaturePrep`, which training runs on every batch and export builds into the
    serving artifact (``FeaturePrep.module``), so serving cannot drift from training.
    Static-shape ops only: it goes through torch.export and TorchScript.

    Args:
        sparse_features: the raw id features, in ``lengths`` row order.
        table_rows: rows of each raw feature's table (hash / mod range).
        id_transform: ``"hash"`` (splitmix64 then modulo), ``"mod"``, ``"none"`` (ids
            pass through) or ``"managed_collision"`` (pass through; the artifact's
            :class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap` maps them).
        dense_features: the raw dense columns, in ``dense``'s column order.
        dense_transform: ``"log1p"`` (of the value clamped at 0) or ``"none"``, for the
            dense columns that are not bucketised.
        bucket_boundaries: dense column -> increasing boundaries; each becomes the id
            feature ``<name>_bucket`` (``bucketize(x, boundaries, right=True)``),
            appended after the raw sparse features.

    Shapes:
        dense [B, Dd] (raw), values [N] int64 (raw ids, feature-major), lengths [Fs, B]
        -> dense [B, Dd - Fb], values [N + Fb*B], lengths [Fs + Fb, B] (Fb bucketised
        columns), the layout :class:`RankMixerInferenceModule` feeds the model.

    Example::

        >>> prep = RawFeaturePrep(["c"], [10], "mod", ["x", "y"], "log1p", {"y": [0.0, 1.0]})
        >>> dense, values, lengths = prep(torch.tensor([[3.0, -1.0], [0.0, 5.0]]),
        ...                               torch.tensor([11, 12, 13]), torch.tensor([[1, 2]]))
        >>> values.tolist(), lengths.tolist(), dense.shape
        ([1, 2, 3, 0, 2], [[1, 2], [1, 1]], torch.Size([2, 1]))
    """

    def __init__(
        self,
        sparse_features: Sequence[str],
        table_rows: Sequence[int],
        id_transform: str,
        dense_features: Sequence[str],
        dense_transform: str,
        bucket_boundaries: Dict[str, Sequence[float]],
    ) -> None:
        super().__init__()
        check_choice("id_transform", id_transform, ID_TRANSFORMS)
        check_choice("dense_transform", dense_transform, DENSE_TRANSFORMS)
        if len(table_rows) != len(sparse_features):
            raise ValueError(
                f"table_rows ({list(table_rows)}) must give one size per sparse feature {list(sparse_features)}"
            )
        unknown = sorted(set(bucket_boundaries) - set(dense_features))
        if unknown:
            raise ValueError(f"bucket_boundaries names {unknown}, which are not dense features {list(dense_features)}")
        self.sparse_features: List[str] = list(sparse_features)
        self.dense_features: List[str] = list(dense_features)
        self.id_transform, self.dense_transform = id_transform, dense_transform
        self.bucket_index: List[int] = [i for i, f in enumerate(dense_features) if f in bucket_boundaries]
        self.kept_index: List[int] = [i for i, f in enumerate(dense_features) if f not in bucket_boundaries]
        self.bucket_boundaries: Dict[str, List[float]] = {
            f: [float(b) for b in bucket_boundaries[f]] for f in self.dense_features if f in bucket_boundaries
        }
        self.register_buffer("rows", torch.tensor(list(table_rows), dtype=torch.int64))
        # a tensor, not a list index: TorchScript cannot index with an empty list
        self.register_buffer("kept_columns", torch.tensor(self.kept_index, dtype=torch.int64), persistent=False)
        self.bucket_buffers: List[str] = []
        for i in self.bucket_index:
            name = f"bounds_{i}"
            self.register_buffer(name, torch.tensor(self.bucket_boundaries[dense_features[i]]))
            self.bucket_buffers.append(name)

    @property
    def model_feature_names(self) -> List[str]:
        """The model's id features: the raw ones, then ``<name>_bucket``."""
        return self.sparse_features + [f"{self.dense_features[i]}_bucket" for i in self.bucket_index]

    @property
    def raw_id_features(self) -> List[str]:
        """Input features that accept any int64 id (hashed, taken modulo or remapped)."""
        return [] if self.id_transform == "none" else list(self.sparse_features)

    def to_metadata(self) -> Dict[str, object]:
        """JSON description for the artifact's metadata (``"preprocessing"``)."""
        return {
            "id_transform": self.id_transform, "dense_transform": self.dense_transform,
            "bucket_boundaries": dict(self.bucket_boundaries),
            "model_feature_names": self.model_feature_names,
            "model_dense_features": [self.dense_features[i] for i in self.kept_index],
        }

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values = values.to(torch.int64)
        if self.id_transform in ("hash", "mod"):
            per_feature = lengths.to(torch.int64).sum(dim=1)  # (Fs,)
            rows = torch.repeat_interleave(self.rows, per_feature, output_size=values.shape[0])  # (N,)
            values = hash_ids(values, rows) if self.id_transform == "hash" else torch.remainder(values, rows)
        bucket_ids: List[torch.Tensor] = []
        for i, name in zip(self.bucket_index, self.bucket_buffers):
            col = dense[:, i].contiguous()  # (B,)
            bucket_ids.append(torch.bucketize(col, getattr(self, name), right=True).to(torch.int64))
        if bucket_ids:
            values = torch.cat([values] + bucket_ids)  # (N + Fb*B,)
            ones = torch.ones(len(bucket_ids), dense.shape[0], dtype=lengths.dtype, device=lengths.device)
            lengths = torch.cat([lengths, ones])  # (Fs + Fb, B)
        kept = dense.index_select(1, self.kept_columns)  # (B, Dd - Fb)
        if self.dense_transform == "log1p":
            kept = torch.log1p(kept.clamp(min=0.0))
        return kept, values, lengths
