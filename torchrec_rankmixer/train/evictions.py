"""Reset the embedding rows that managed collision gave to new ids.

When :class:`~torchrec_rankmixer.features.managed_collision.ManagedCollisionRemapper`
evicts an id, its row goes to a newcomer. Like TorchRec's sharded managed-collision EBC
(``reset_embedding_weight_momentum``, then the table's ``init_fn``), the trainer then
resets the row: the embedding row is re-drawn from the table's initialiser (or zeroed,
``data.managed_collision.evicted_row_init=zero``) and every per-row optimiser state
(row-wise Adagrad's accumulator, Adam's moments, RMSProp's average for data-parallel
tables) is set to zero, so the newcomer starts like a fresh id instead of inheriting the
evicted id's embedding and step size.

The re-drawn values depend only on (``seed``, table name): the trainer derives ``seed``
from ``train.seed`` and the global index of the batch that evicted the rows, so every rank
draws the same rows (data-parallel replicas stay identical) and a resumed run draws what
the uninterrupted run drew.

It works on the local shards of any sharding (table-wise, row-wise, column-wise: the
shard's row and column offsets are read from its metadata) and on data-parallel replicas,
through the model's and the optimiser's state dicts, whose tensors are views of the live
weights and states.
"""

import zlib
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _set_rows(value: Any, rows: torch.Tensor, fresh: Optional[torch.Tensor]) -> None:
    """Set ``rows`` (global row ids) of a tensor, or of this rank's shards of a ShardedTensor,
    to ``fresh`` [R, D] (the full-width new rows) or to zero when ``fresh`` is None."""
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            picked = (rows >= start) & (rows < start + count)
            mine = rows[picked] - start
            if mine.numel():
                target = shard.tensor
                if fresh is None or target.dim() < 2:
                    target[mine.to(target.device)] = 0
                else:
                    col, width = shard.metadata.shard_offsets[1], shard.metadata.shard_sizes[1]
                    target[mine.to(target.device)] = fresh[picked, col:col + width].to(target)
    elif isinstance(value, torch.Tensor) and value.dim() >= 1:
        index = rows.to(value.device)
        if fresh is None or value.dim() < 2:
            value[index] = 0
        else:
            value[index] = fresh.to(value)


def _fresh_rows(init_fn: Callable[[torch.Tensor], Any], num: int, dim: int, seed: int, table: str) -> torch.Tensor:
    """[num, dim] rows drawn by the table's ``init_fn`` from a seed fixed by (seed, table)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}/{table}".encode()))
        out = torch.empty(num, dim)
        init_fn(out)
    return out


def reset_rows(
    model: nn.Module, optimizer: Any, evictions: Dict[str, torch.Tensor],
    init: Optional[Dict[str, Callable[[torch.Tensor], Any]]] = None, seed: int = 0,
) -> int:
    """Reset the evicted rows of the named tables in ``model`` and ``optimizer``.

    Args:
        model: the (DMP-wrapped) model holding EBC tables ``...embedding_bags.<table>.weight``.
        optimizer: a keyed optimiser (e.g. CombinedOptimizer) whose ``state_dict()["state"]``
            is keyed by parameter name.
        evictions: table name -> row ids [R] int64 to reset.
        init: table name -> initialiser (TorchRec's ``EmbeddingBagConfig.init_fn``) that
            re-draws the rows' weights; tables not in it (or ``None``) get zero rows.
            Optimiser states are always zeroed.
        seed: fixes the re-drawn values (with the table name).

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
    suffixes = {f"embedding_bags.{table}.weight": table for table in evictions}
    reset = 0
    with torch.no_grad():
        for key, value in model.state_dict().items():
            for suffix, table in suffixes.items():
                if key.endswith(suffix):
                    rows, fresh = evictions[table], None
                    if init is not None and table in init:
                        fresh = _fresh_rows(init[table], rows.numel(), value.size(1), seed, table)
                    _set_rows(value, rows, fresh)
                    reset += _local_count(value, rows)
        state = optimizer.state_dict().get("state", {})
        for key, per_param in state.items():
            for suffix, table in suffixes.items():
                if isinstance(key, str) and key.endswith(suffix) and isinstance(per_param, dict):
                    for value in per_param.values():
                        _set_rows(value, evictions[table], None)
    return reset


def _local_count(value: Any, rows: torch.Tensor) -> int:
    if isinstance(value, ShardedTensor):
        total = 0
        for shard in value.local_shards():
            start, count = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            total += int(((rows >= start) & (rows < start + count)).sum())
        return total
    return int(rows.numel())
