"""Eager input checks for model forwards: clear ValueErrors instead of silent corruption.

Wrapped with ``torch.fx.wrap`` so FX tracing records one opaque call instead of
tracing the data-dependent branches.
"""

from typing import List, Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def check_kjt(kjt: KeyedJaggedTensor) -> None:
    """The KJT itself is well formed: distinct keys, no weights (the tables are unweighted
    bags), one length per (key, sample), no negative length, lengths summing to the
    number of values. ValueError naming the key (and sample) otherwise.

    Example::

        >>> bad = KeyedJaggedTensor(keys=["a"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 3]))
        >>> check_kjt(bad)
        Traceback (most recent call last):
        ...
        ValueError: the KeyedJaggedTensor's lengths sum to 4 but it holds 2 values
    """
    keys = kjt.keys()
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"the KeyedJaggedTensor names keys {dupes} more than once")
    if kjt.weights_or_none() is not None:
        raise ValueError("the KeyedJaggedTensor carries weights; the model's tables are unweighted "
                         "bags (weights would be ignored): pass ids without weights")
    lengths, values = kjt.lengths(), kjt.values()
    if lengths.is_floating_point():
        raise ValueError(f"the KeyedJaggedTensor's lengths must be integers, got {lengths.dtype}")
    stride = kjt.stride()
    if lengths.numel() != len(keys) * stride:
        raise ValueError(f"the KeyedJaggedTensor has {lengths.numel()} lengths for {len(keys)} keys x "
                         f"{stride} samples")
    if bool((lengths < 0).any()):
        pos = int((lengths < 0).nonzero()[0, 0])
        raise ValueError(f"feature {keys[pos // stride]!r} sample {pos % stride} has a negative "
                         f"length ({int(lengths[pos])})")
    total = int(lengths.sum())
    if total != values.numel():
        raise ValueError(f"the KeyedJaggedTensor's lengths sum to {total} but it holds {values.numel()} values")


@torch.fx.wrap
def check_model_inputs(
    dense_features: Optional[torch.Tensor],
    sparse_features: KeyedJaggedTensor,
    feature_names: List[str],
    num_embeddings: List[int],
    dense_in_features: int,
    dense_feature_names: Optional[List[str]] = None,
    dense_dtype: Optional[torch.dtype] = None,
) -> None:
    """Raise ValueError on a malformed KJT (:func:`check_kjt`), unknown/missing feature
    keys, ids out of range, non-finite, mis-typed or mis-shaped dense features, and
    batch-size mismatches.

    Args:
        dense_features: [B, dense_in_features] (or None / [B, 0] when the model has none).
        sparse_features: KJT with stride B and one key per embedded feature.
        feature_names: the model's features, aligned with ``num_embeddings``.
        num_embeddings: table rows for each feature; ids must be in [0, rows).
        dense_in_features: expected dense width.
        dense_feature_names: names of the dense columns, if known (errors then name the
            column instead of its index).
        dense_dtype: the dtype the dense arch computes in, if known (another dtype is
            refused with the cast to make).
    """
    check_kjt(sparse_features)
    keys = sparse_features.keys()
    unknown = [k for k in keys if k not in feature_names]
    if unknown:
        raise ValueError(f"unknown sparse feature keys {unknown}; the model embeds {feature_names}")
    missing = [k for k in feature_names if k not in keys]
    if missing:
        raise ValueError(f"missing sparse feature keys {missing}; got {keys}")
    batch = sparse_features.stride()
    if dense_in_features > 0:
        if dense_features is None:
            raise ValueError(f"dense_features is None but the model takes {dense_in_features}")
        if dense_features.dim() != 2 or dense_features.shape[1] != dense_in_features:
            raise ValueError(
                f"dense_features shape {tuple(dense_features.shape)} must be "
                f"[B, {dense_in_features}]"
            )
        if dense_features.shape[0] != batch:
            raise ValueError(
                f"batch size mismatch: dense_features has {dense_features.shape[0]} rows, "
                f"sparse_features has stride {batch}"
            )
        if not dense_features.is_floating_point() or (dense_dtype is not None and dense_features.dtype != dense_dtype):
            want = dense_dtype or torch.float32
            raise ValueError(f"dense_features has dtype {dense_features.dtype}; the model takes {want} "
                             f"(cast with .to({want}))")
        if dense_features.is_floating_point() and not bool(torch.isfinite(dense_features).all()):
            row, col = (~torch.isfinite(dense_features)).nonzero()[0].tolist()
            if dense_feature_names is not None:
                raise ValueError(
                    f"dense column {dense_feature_names[col]!r} has a non-finite value (NaN/inf) at row {row}"
                )
            raise ValueError(f"dense_features has a non-finite value (NaN/inf) at row {row}, column {col}")
    values = sparse_features.values()
    if values.numel() == 0:
        return
    if values.is_floating_point():
        raise ValueError(f"sparse feature ids must be integers, got dtype {values.dtype}")
    limit_of = dict(zip(feature_names, num_embeddings))
    lengths = torch.tensor(sparse_features.length_per_key(), device=values.device)
    limits = torch.tensor([limit_of[k] for k in keys], device=values.device)
    per_value_limit = torch.repeat_interleave(limits, lengths)
    bad = (values < 0) | (values >= per_value_limit)
    if bool(bad.any()):
        pos = int(bad.nonzero()[0, 0])
        key_idx = int(torch.searchsorted(torch.cumsum(lengths, 0), pos, right=True))
        key = keys[key_idx]
        raise ValueError(
            f"feature {key!r} has id {int(values[pos])} outside its table's range "
            f"[0, {limit_of[key]})"
        )


def dense_dtype_of(dense_arch: Optional[torch.nn.Module]) -> Optional[torch.dtype]:
    """The dtype the dense arch computes in (None without dense input): what
    :func:`check_model_inputs` checks the dense features against.

    Example::

        >>> dense_dtype_of(torch.nn.Linear(2, 2).double()), dense_dtype_of(None)
        (torch.float64, None)
    """
    if dense_arch is None:
        return None
    return next(dense_arch.parameters()).dtype
