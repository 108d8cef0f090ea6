"""Reset the embedding rows that managed collision gave to new ids.

When :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`
evicts an id, its row goes to a newcomer. Like TorchRec's sharded managed-collision EBC
(``reset_embedding_weight_momentum``), the trainer then clears the row: the embedding row
and every per-row optimiser state (row-wise Adagrad's accumulator, Adam's moments, RMSProp's
average for data-parallel tables) are set to zero, so the newcomer starts from a neutral
embedding with a fresh step size instead of inheriting the evicted id's.

It works on the local shards of any sharding (table-wise, row-wise, column-wise: the
shard's row offset is read from its metadata) and on data-parallel replicas (every rank
applies the same resets, since the mapping is identical on all ranks), through the model's
and the optimiser's state dicts, whose tensors are views of the live weights and states.
"""

from typing import Any, Dict

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _zero_rows(value: Any, rows: torch.Tensor) -> None:
    """Zero ``rows`` (global row ids) of a tensor or of this rank's shards of a ShardedTensor."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            mine = rows[(rows >= start) & (rows < start + count)] - start
            if mine.numel():
                shard.tensor[mine.to(shard.tensor.device)] = 0
    elif isinstance(value, torch.Tensor) and value.dim() >= 1:
        value[rows.to(value.device)] = 0


def reset_rows(model: nn.Module, optimizer: Any, evictions: Dict[str, torch.Tensor]) -> int:
    """Zero the evicted rows of the named tables in ``model`` and ``optimizer``.

    Args:
        model: the (DMP-wrapped) model holding EBC tables ``...embedding_bags.<table>.weight``.
        optimizer: a keyed optimiser (e.g. CombinedOptimizer) whose ``state_dict()["state"]``
            is keyed by parameter name.
        evictions: table name -> row ids [R] int64 to reset.

    Returns:
        The number of rows reset on this rank's weights (local shards and replicas).

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        ...     name="t", embedding_dim=2, num_embeddings=4, feature_names=["a"])])
        >>> reset_rows(ebc, torch.optim.SGD(ebc.parameters(), lr=0.1), {"t": torch.tensor([1, 3])})
        2
        >>> ebc.embedding_bags["t"].weight[[1, 3]].abs().sum().item()
        0.0
    """
    if not evictions:
        return 0
    suffixes = {f"embedding_bags.{table}.weight": rows for table, rows in evictions.items()}
    reset = 0
    with torch.no_grad():
        for key, value in model.state_dict().items():
            for suffix, rows in suffixes.items():
                if key.endswith(suffix):
                    _zero_rows(value, rows)
                    reset += _local_count(value, rows)
        state = optimizer.state_dict().get("state", {})
        for key, per_param in state.items():
            for suffix, rows in suffixes.items():
                if isinstance(key, str) and key.endswith(suffix) and isinstance(per_param, dict):
                    for value in per_param.values():
                        _zero_rows(value, rows)
    return reset


def _local_count(value: Any, rows: torch.Tensor) -> int:
    if isinstance(value, ShardedTensor):
        total = 0
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            total += int(((rows >= start) & (rows < start + count)).sum())
        return total
    return int(rows.numel())
