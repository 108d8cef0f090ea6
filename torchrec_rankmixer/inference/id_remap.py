"""Read-only managed-collision remap inside the serving artifact: raw ids in, table rows out.

A run trained with ``data.id_transform=managed_collision`` maps raw 64-bit ids to table
rows with a :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`.
:class:`RawIdRemap` freezes that mapping (sorted raw ids and their slots, per managed
feature) into plain buffers and applies it on the artifact's flat ``values`` with
static-shape ops only (searchsorted, where, bucketize), so it goes through torch.export and
TorchScript with the rest of the model. Ids not in the mapping go to the table's shared last
row (``zch_size - 1``), the row that training used for every id not (yet) admitted.
"""

from typing import List, Optional, Sequence

import torch
from torch import nn

from torchrec_rankmixer.features.prep import hash_ids


class RawIdRemap(nn.Module):
    """Frozen raw-id -> row mapping for some of an artifact's features.

    Args:
        feature_names: all sparse features of the artifact, in ``lengths`` row order.
        managed: per managed feature name: (sorted raw ids [Z] int64, their rows [Z] int64);
            the last entry of the sorted ids is TorchRec's sentinel (int64 max), never matched
            except by itself, whose row is the shared row ``Z - 1``.
        input_hash_size: raw ids are first hashed into ``[0, input_hash_size)`` (as in
            training), or None.

    Shapes:
        values [N] int64 (feature_names[0]'s ids, then feature_names[1]'s, ...),
        lengths [F, B] -> values [N] int64 (managed features remapped, others as given).

    Example::

        >>> r = RawIdRemap(["a", "b"], {"b": (torch.tensor([5, 9, 2**63 - 1]), torch.tensor([1, 0, 2]))})
        >>> r(torch.tensor([5, 9, 5, 7]), torch.tensor([[1, 1], [1, 1]])).tolist()  # b: 5 -> 1, 7 unseen -> 2
        [5, 9, 1, 2]
    """

    def __init__(
        self,
        feature_names: Sequence[str],
        managed: "dict[str, tuple[torch.Tensor, torch.Tensor]]",
        input_hash_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(managed) - set(feature_names))
        if unknown:
            raise ValueError(f"managed features {unknown} are not among the artifact's features {list(feature_names)}")
        self.feature_names: List[str] = list(feature_names)
        self.input_hash_size = input_hash_size
        self.managed_index: List[int] = [i for i, f in enumerate(feature_names) if f in managed]
        self.spans: List[List[int]] = []  # per managed feature: [start, stop) in the buffers
        ids, rows, start = [], [], 0
        for i in self.managed_index:
            sorted_ids, slots = managed[feature_names[i]]
            if sorted_ids.shape != slots.shape or sorted_ids.numel() < 2:
                raise ValueError(f"feature {feature_names[i]!r}: sorted ids and rows must be [Z], Z >= 2")
            if bool((sorted_ids[1:] < sorted_ids[:-1]).any()):
                raise ValueError(f"feature {feature_names[i]!r}: raw ids must be sorted")
            ids.append(sorted_ids.to(torch.int64))
            rows.append(slots.to(torch.int64))
            self.spans.append([start, start + sorted_ids.numel()])
            start += sorted_ids.numel()
        self.register_buffer("sorted_ids", torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64))
        self.register_buffer("rows", torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64))

    @property
    def raw_id_features(self) -> List[str]:
        """The features this module remaps (they take raw ids)."""
        return [self.feature_names[i] for i in self.managed_index]

    @classmethod
    def from_remapper(cls, remapper: nn.Module, feature_names: Sequence[str]) -> "RawIdRemap":
        """Freeze a trained :class:`ManagedCollisionRemapper`'s current mapping.

        Args:
            remapper: the run's remapper (its state loaded from the checkpoint).
            feature_names: the artifact's features, in ``lengths`` row order.
        """
        managed = {}
        for table in remapper.collection.embedding_configs():
            mch = remapper.mch_modules[table.name]
            for f in table.feature_names:
                managed[f] = (mch._mch_sorted_raw_ids.detach().clone(), mch._mch_remapped_ids_mapping.detach().clone())
        return cls(feature_names, managed, remapper.settings["input_hash_size"])

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.managed_index:
            return values
        ends = torch.cumsum(lengths.sum(dim=1), dim=0)  # (F,)
        feature = torch.bucketize(torch.arange(values.shape[0], device=values.device), ends, right=True)  # (N,)
        keys = hash_ids(values, self.input_hash_size) if self.input_hash_size is not None else values
        out = values
        for i, (start, stop) in zip(self.managed_index, self.spans):
            sorted_ids, rows = self.sorted_ids[start:stop], self.rows[start:stop]
            pos = torch.searchsorted(sorted_ids[:-1], keys)  # (N,) in [0, Z - 1]
            hit = sorted_ids[pos] == keys
            remapped = torch.where(hit, rows[pos], torch.full_like(keys, stop - start - 1))
            out = torch.where(feature == i, remapped, out)
        return out
