"""Training's feature preparation inside the serving artifact: raw columns in.

A file run (``rankmixer-train`` with CSV/libsvm/Criteo/Parquet/ORC data) prepares its rows
with :class:`~torchrec_rankmixer.data.features.FeaturePrep`: raw ids are hashed or taken
modulo into each feature's table, dense columns with bucket boundaries become
``<name>_bucket`` id features, the other dense columns get ``log1p``. :class:`RawFeaturePrep`
does the same on the artifact's plain tensors, with static-shape ops only, so it goes
through torch.export and TorchScript with the model: the artifact then takes the columns
of the training files as they are, and serving cannot drift from training.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from torchrec_rankmixer.data.features import FeaturePrep, hash_ids

ID_TRANSFORMS = ("hash", "mod", "none", "managed_collision")


class RawFeaturePrep(nn.Module):
    """Raw sparse ids and raw dense columns -> the model's inputs, as in training.

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
        if id_transform not in ID_TRANSFORMS:
            raise ValueError(f"id_transform ({id_transform!r}) must be one of {list(ID_TRANSFORMS)}")
        if dense_transform not in ("log1p", "none"):
            raise ValueError(f"dense_transform ({dense_transform!r}) must be 'log1p' or 'none'")
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
        self.bucket_buffers: List[str] = []
        for i in self.bucket_index:
            name = f"bounds_{i}"
            self.register_buffer(name, torch.tensor(self.bucket_boundaries[dense_features[i]]))
            self.bucket_buffers.append(name)

    @classmethod
    def from_feature_prep(cls, prep: FeaturePrep) -> "RawFeaturePrep":
        """The artifact-side twin of a run's :class:`FeaturePrep`."""
        return cls(
            prep.sparse_features, [prep.rows[f] for f in prep.sparse_features], prep.id_transform,
            prep.dense_features, prep.dense_transform,
            {f: b.tolist() for f, b in prep.boundaries.items()},
        )

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
        kept = dense[:, self.kept_index]  # (B, Dd - Fb)
        if self.dense_transform == "log1p":
            kept = torch.log1p(kept.clamp(min=0.0))
        return kept, values, lengths
