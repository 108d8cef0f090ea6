"""Sharded training of DLRM_RankMixer with a sequence EmbeddingCollection in 2 real processes.

gloo, CPU, table-wise sharding of both the EBC and the EC (EmbeddingBagCollectionSharder
+ EmbeddingCollectionSharder), dense parameters data-parallel, TrainPipelineSparseDist.
"""

import copy
import os
import socket
import tempfile
import traceback
from typing import Dict, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torchrec.datasets.utils import Batch

WORLD = 2
STEPS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _TrainModule(nn.Module):
    """Batch -> (loss, (loss, logits)): TrainPipelineSparseDist backprops the first and
    returns the second."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        logits = self.model(batch.dense_features, batch.sparse_features)[:, 0]
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach())


def _worker(rank: int, port: int, out_dir: str) -> None:
    try:
        _run(rank, port, out_dir)
    except BaseException:
        with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _run(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.distributed.types import ShardingEnv
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec import EmbeddingBagCollection, EmbeddingCollection
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from torchrec_rankmixer.config import RankMixerConfig
    from torchrec_rankmixer.data.synthetic import SyntheticClickData
    from torchrec_rankmixer.data.synthetic_sequences import SyntheticSequenceData
    from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

    data = SyntheticSequenceData(
        base=SyntheticClickData(num_sparse_features=2, num_embeddings=40, dense_in_features=3),
        num_items=60, num_categories=6, max_history=12, recent_window=4,
    )
    torch.manual_seed(0)  # same init on both ranks
    model = DLRM_RankMixer(
        embedding_bag_collection=EmbeddingBagCollection(tables=data.embedding_bag_configs(8)),
        dense_in_features=3, dense_arch_layer_sizes=[8], over_arch_layer_sizes=[8, 1],
        rankmixer_config=RankMixerConfig(d_model=16, num_tokens=4, num_layers=1),
        feature_groups={"f0": ["f0"], "f1": ["f1"], "behaviour": ["item", "hist_item"]},
        sequence_embedding_collection=EmbeddingCollection(tables=data.sequence_table_configs(8)),
        sequence_features=data.sequence_feature_configs(max_len=4, pooling="target"),
    )
    reference = copy.deepcopy(model)
    train_module = _TrainModule(model)
    apply_optimizer_in_backward(
        torch.optim.SGD,
        list(model.sparse_arch.parameters()) + list(model.sequence_arch.embedding_collection.parameters()),
        {"lr": 0.1},
    )
    pg = dist.GroupMember.WORLD
    sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
    tables = [c.name for c in data.embedding_bag_configs(8) + data.sequence_table_configs(8)]
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD, compute_device="cpu"),
        constraints={t: ParameterConstraints(sharding_types=["table_wise"]) for t in tables},
    )
    plan = planner.collective_plan(train_module, sharders, pg)
    dmp = DistributedModelParallel(
        train_module, env=ShardingEnv.from_process_group(pg), plan=plan,
        sharders=sharders, device=torch.device("cpu"),
    )
    report: Dict[str, object] = {
        "plan": {
            module: {table: (p.sharding_type, p.ranks) for table, p in params.items()}
            for module, params in plan.plan.items()
        }
    }
    # DMP re-initialises the tables it shards: copy the unsharded copy's rows into the shards
    reference_state = reference.state_dict()
    for key, value in dmp.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = reference_state[key.removeprefix("model.")]
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[r0 : r0 + nr, c0 : c0 + nc])
    train_set = list(data.batches(64, 4, start=100 + 4 * rank))  # 4 local batches, seen 5 times
    eval_batch = data.batch(32, 10_000 + rank)

    def eval_loss() -> float:
        with torch.no_grad():
            return sum(float(dmp(b)[0]) for b in train_set) / len(train_set)

    with torch.no_grad():
        sharded = dmp.module.model(eval_batch.dense_features, eval_batch.sparse_features)
        unsharded = reference(eval_batch.dense_features, eval_batch.sparse_features)
    report["max_forward_diff"] = float((sharded - unsharded).abs().max())
    report["loss_before"] = eval_loss()
    item_table = [v for k, v in dmp.state_dict().items() if k.endswith("t_item.weight")][0]
    item_rows_before = [s.tensor.clone() for s in item_table.local_shards()]

    dense_opt = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=1e-2),
    )
    pipeline = TrainPipelineSparseDist(
        dmp, CombinedOptimizer([dmp.fused_optimizer, dense_opt]), torch.device("cpu")
    )
    batches = iter(train_set * (STEPS // len(train_set)))
    steps = 0
    while True:
        try:
            pipeline.progress(batches)
        except StopIteration:
            break
        steps += 1
    report["steps"] = steps
    report["pipelined"] = sorted(type(m).__name__ for m in pipeline._pipelined_modules)
    pipeline.detach()
    report["loss_after"] = eval_loss()
    report["item_rows_changed"] = [
        not torch.equal(before, s.tensor) for before, s in zip(item_rows_before, item_table.local_shards())
    ]
    dense = torch.cat([p.detach().flatten() for p in dmp.module.model.dense_parameters()])
    gathered = [torch.empty_like(dense) for _ in range(WORLD)]
    dist.all_gather(gathered, dense)
    report["dense_max_rank_diff"] = float((gathered[0] - gathered[1]).abs().max())
    torch.save(report, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    dist.destroy_process_group()


def test_sharded_sequence_training_two_processes() -> None:
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
        except Exception as e:
            errors = [open(os.path.join(out_dir, f)).read() for f in os.listdir(out_dir) if f.startswith("error")]
            raise AssertionError("\n".join(errors) or str(e)) from e
        reports = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    for rank, r in enumerate(reports):
        print(rank, {k: v for k, v in r.items() if k != "plan"})
        # both embedding modules are sharded table-wise and pipelined by the sparse dist
        plan = r["plan"]
        assert set(plan) == {
            "model.sparse_arch.embedding_bag_collection", "model.sequence_arch.embedding_collection",
        }
        assert {kind for module in plan.values() for kind, _ in module.values()} == {"table_wise"}
        assert r["pipelined"] == ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"]
        assert r["steps"] == STEPS
        # sharded lookup + truncation + target attention == the unsharded model, same weights
        assert r["max_forward_diff"] < 1e-5
        # training learns (loss on data it saw drops) and keeps dense replicas identical (DDP)
        assert r["loss_after"] < r["loss_before"] - 0.01
        assert r["dense_max_rank_diff"] == 0.0
    owner = reports[0]["plan"]["model.sequence_arch.embedding_collection"]["t_item"][1][0]
    assert reports[owner]["item_rows_changed"] == [True]  # the sequence table trained
    assert reports[1 - owner]["item_rows_changed"] == []  # and lives on one rank only
