"""Checked conversion of user inputs into the artifact's (dense, values, lengths) tensors.

Every mistake gets a ValueError naming the feature, row or column: unknown or missing
features, wrong dtypes (float ids, non-numeric dense values), ids outside their table,
NaN/inf dense values, mismatched batch sizes. The range/NaN/key checks are the model's
own (:func:`torchrec_rankmixer.models.validation.check_model_inputs`), run in Python
before the exported graph, which carries no data-dependent checks.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.data.text import raw_id
from torchrec_rankmixer.models.validation import check_kjt, check_model_inputs

Batch3 = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class InputSchema:
    """What an artifact accepts (read from its metadata).

    Example::

        >>> s = InputSchema(("a", "b"), (10, 20), ("x",))
        >>> dense, values, lengths = s.to_tensors({"a": [1, 2], "b": [[3, 4], []]}, [[0.5], [1.0]])
        >>> values.tolist(), lengths.tolist()
        ([1, 2, 3, 4], [[1, 1], [2, 0]])
    """

    feature_names: Tuple[str, ...]
    num_embeddings: Tuple[int, ...]
    dense_feature_names: Tuple[str, ...]
    raw_id_features: Tuple[str, ...] = ()  # take any int64 id (the artifact remaps them)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "InputSchema":
        return cls(
            tuple(metadata["feature_names"]),
            tuple(metadata["num_embeddings"]),
            tuple(metadata["dense_feature_names"]),
            tuple(metadata.get("raw_id_features", ())),
        )

    @property
    def dense_in_features(self) -> int:
        return len(self.dense_feature_names)

    # ------------------------------------------------------------------ checks
    def check_keys(self, keys: Sequence[str]) -> None:
        """ValueError on unknown or missing sparse feature names."""
        unknown = [k for k in keys if k not in self.feature_names]
        if unknown:
            raise ValueError(f"unknown sparse features {unknown}; the model takes {list(self.feature_names)}")
        missing = [k for k in self.feature_names if k not in keys]
        if missing:
            raise ValueError(f"missing sparse features {missing}")

    def check(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> None:
        """The model's checks (ids in range, finite dense, shapes) on artifact tensors; ids of
        ``raw_id_features`` may be any int64 (the artifact maps them to rows)."""
        if self.raw_id_features and lengths.dim() == 2 and int(lengths.sum()) == values.numel():
            per_feature = lengths.to(torch.int64).sum(dim=1)  # (F,)
            raw = torch.tensor([f in self.raw_id_features for f in self.feature_names])
            values = torch.where(torch.repeat_interleave(raw, per_feature), 0, values)  # row 0: in range
        kjt = KeyedJaggedTensor(keys=list(self.feature_names), values=values, lengths=lengths.reshape(-1))
        check_model_inputs(
            dense, kjt, list(self.feature_names), list(self.num_embeddings), self.dense_in_features,
            list(self.dense_feature_names),
        )

    # ------------------------------------------------------------------ convert
    def to_tensors(self, sparse: Mapping[str, Any], dense: Optional[Any] = None) -> Batch3:
        """Convert ``{feature: ids}`` and a dense matrix, checked.

        Args:
            sparse: per feature, ids as a 1-D integer tensor/array/list (one id per
                sample), a 2-D one (n ids per sample), or a list of lists (bags).
            dense: [B, dense_in_features] numbers (tensor, array or nested list);
                None when the model has no dense input.

        Returns:
            (dense float32 [B, Dd], values int64 [N], lengths int32 [F, B]).
        """
        if not isinstance(sparse, Mapping):
            raise ValueError(f"sparse features must be a mapping name -> ids, got {type(sparse).__name__}")
        self.check_keys(list(sparse))
        bags = [_ids_to_bags(name, sparse[name]) for name in self.feature_names]
        batch = bags[0][1].numel()
        for name, (_, lens) in zip(self.feature_names, bags):
            if lens.numel() != batch:
                raise ValueError(
                    f"sparse feature {name!r} has {lens.numel()} samples, "
                    f"{self.feature_names[0]!r} has {batch}"
                )
        if batch == 0:
            raise ValueError("empty batch: give at least one sample")
        values = torch.cat([v for v, _ in bags])  # (N,)
        lengths = torch.stack([lens for _, lens in bags])  # (F, B)
        dense_t = self._dense_tensor(dense, batch)
        self.check(dense_t, values, lengths)
        return dense_t, values, lengths

    def kjt_to_tensors(self, kjt: KeyedJaggedTensor, dense: Optional[Any] = None) -> Batch3:
        """Convert a KeyedJaggedTensor (keys in any order) and dense features, checked."""
        check_kjt(kjt)  # before any use of its lengths (a bad KJT reads past its values)
        self.check_keys(kjt.keys())
        if kjt.values().is_floating_point():
            raise ValueError(f"sparse feature ids must be integers, got {kjt.values().dtype}")
        order = [kjt.keys().index(f) for f in self.feature_names]
        kjt = kjt.permute(order)
        batch = kjt.stride()
        values = kjt.values().to(torch.int64)
        lengths = kjt.lengths().to(torch.int32).reshape(len(self.feature_names), batch)
        dense_t = self._dense_tensor(dense, batch)
        self.check(dense_t, values, lengths)
        return dense_t, values, lengths

    def _dense_tensor(self, dense: Optional[Any], batch: int) -> torch.Tensor:
        if self.dense_in_features == 0:
            if dense is not None and torch.as_tensor(dense).numel() > 0:
                raise ValueError("this model takes no dense features; pass dense=None")
            return torch.zeros(batch, 0)
        if dense is None:
            raise ValueError(f"dense features are missing: the model takes {self.dense_in_features} "
                             f"({list(self.dense_feature_names)})")
        try:
            t = torch.as_tensor(dense)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"dense features must be numbers: {exc}") from exc
        if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_int(t)):
            raise ValueError(f"dense features must be real numbers, got dtype {t.dtype}")
        if t.dim() != 2 or t.shape[1] != self.dense_in_features:
            raise ValueError(f"dense features shape {tuple(t.shape)} must be [B, {self.dense_in_features}]")
        if t.shape[0] != batch:
            raise ValueError(f"batch size mismatch: dense features have {t.shape[0]} rows, "
                             f"sparse features {batch}")
        return t.to(torch.float32)


def _is_int(t: torch.Tensor) -> bool:
    return t.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _ids_to_bags(name: str, ids: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """(values int64 [n_ids], lengths int32 [B]) of one feature's ids."""
    if isinstance(ids, (list, tuple)) and len(ids) == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int32)
    if isinstance(ids, (list, tuple)) and any(isinstance(x, (list, tuple)) for x in ids):
        values: List[int] = []
        lengths: List[int] = []
        for row, bag in enumerate(ids):
            bag = list(bag) if isinstance(bag, (list, tuple)) else [bag]
            for x in bag:
                if isinstance(x, bool) or not isinstance(x, int):
                    raise ValueError(
                        f"sparse feature {name!r} row {row}: ids must be integers, got {x!r}"
                    )
            values.extend(bag)
            lengths.append(len(bag))
        return torch.tensor(values, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int32)
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"sparse feature {name!r}: ids must be integers ({exc})") from exc
    if not _is_int(t):
        raise ValueError(f"sparse feature {name!r}: ids must be integers, got dtype {t.dtype}")
    if t.dim() == 1:
        return t.to(torch.int64), torch.ones(t.shape[0], dtype=torch.int32)
    if t.dim() == 2:
        return t.reshape(-1).to(torch.int64), torch.full((t.shape[0],), t.shape[1], dtype=torch.int32)
    raise ValueError(f"sparse feature {name!r}: ids of shape {tuple(t.shape)} must be [B] or [B, n]")


def columns_to_inputs(
    schema: InputSchema, columns: Dict[str, List[Any]], first_row: int = 0
) -> Tuple[Dict[str, Any], Optional[List[List[float]]]]:
    """Table columns (python lists per column) -> (sparse mapping, dense rows).

    Sparse cells: an int (one id), a list of ints (a bag), or a string ``"3|17|5"``
    (a bag; ``""`` is an empty bag). In a string, a token of a ``raw_id_features``
    feature that is not an integer is hashed to int64 as the training readers do
    (:func:`~torchrec_rankmixer.data.text.raw_id`: blake2b), so text categories score as
    they trained. Dense cells: numbers, or strings that parse as numbers (a CSV column
    with one bad cell is read as text); a missing cell is an error. Errors name the row
    (``first_row`` + the position in these columns) and the cell.

    Example::

        >>> schema = InputSchema(("a",), (10,), ("x",))
        >>> columns_to_inputs(schema, {"a": [1, "2|3", ""], "x": [0.5, 1, 2]})
        ({'a': [[1], [2, 3], []]}, [[0.5], [1.0], [2.0]])
    """
    sparse: Dict[str, Any] = {}
    for name in schema.feature_names:
        cells, raw = columns[name], name in schema.raw_id_features
        bags: List[List[int]] = []
        for row, cell in enumerate(cells, start=first_row):
            if cell is None:
                raise ValueError(f"sparse column {name!r} row {row} is empty (null); "
                                 "write an empty bag as \"\" or []")
            if isinstance(cell, str):
                try:
                    tokens = cell.split("|") if cell.strip() else []
                    bags.append([raw_id(x) if raw else int(x) for x in tokens])
                except ValueError:
                    raise ValueError(f"sparse column {name!r} row {row}: {cell!r} is not "
                                     "integer ids separated by '|'") from None
            else:
                bag = list(cell) if isinstance(cell, (list, tuple)) else [cell]
                for x in bag:
                    if isinstance(x, bool) or not isinstance(x, int):
                        raise ValueError(f"sparse column {name!r} row {row}: {cell!r} is not integer ids")
                bags.append(bag)
        sparse[name] = bags
    if schema.dense_in_features == 0:
        return sparse, None
    rows = len(columns[schema.feature_names[0]])
    dense: List[List[float]] = [[0.0] * schema.dense_in_features for _ in range(rows)]
    for j, name in enumerate(schema.dense_feature_names):
        for i, cell in enumerate(columns[name]):
            row = first_row + i
            if cell is None:
                raise ValueError(f"dense column {name!r} row {row} is empty (null)")
            if isinstance(cell, str):
                try:
                    cell = float(cell)
                except ValueError:
                    raise ValueError(f"dense column {name!r} row {row}: {cell!r} is not a number") from None
            if isinstance(cell, bool) or not isinstance(cell, (int, float)):
                raise ValueError(f"dense column {name!r} row {row}: {cell!r} is not a number")
            dense[i][j] = float(cell)
    return sparse, dense
