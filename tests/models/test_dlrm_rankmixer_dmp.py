"""DLRM_RankMixer under DistributedModelParallel + TrainPipelineSparseDist, 2 real processes.

Table-wise sharded embeddings (gloo, CPU), fused row-wise Adagrad for the tables, Adam
for the dense part. Checks that the loss falls and both ranks hold identical dense
weights after training (and, once synced, BatchNorm statistics), for the default config (TokenMixer-Large at k = 1), the RankMixer
block, and TokenMixer-Large with 3 layers and the global token.
"""

import os
import socket
from typing import Dict, Optional

import pytest

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: Dict[int, dict], block: Optional[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    from torchrec import EmbeddingBagCollection
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.models.dlrm import DLRMTrain
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    from torchrec_rankmixer.data.synthetic import SyntheticClickData
    from torchrec_rankmixer.models.defaults import default_config
    from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

    data = SyntheticClickData(num_sparse_features=4, num_embeddings=100, seed=1)
    ebc = EmbeddingBagCollection(tables=data.table_configs(8), device=torch.device("meta"))
    config = None  # DLRM_RankMixer's default: 4 sparse tokens + 1 dense token
    if block == "rankmixer":
        config = default_config(4, 1, overrides={"block": block})
    elif block is not None:
        config = default_config(4, 1, overrides={"block": block, "num_layers": 3, "tml_global_token": True})
    model = DLRMTrain(
        DLRM_RankMixer(
            embedding_bag_collection=ebc,
            dense_in_features=data.dense_in_features,
            dense_arch_layer_sizes=[16, 8],
            over_arch_layer_sizes=[16, 1],
            rankmixer_config=config,
        )
    )
    apply_optimizer_in_backward(
        RowWiseAdagrad, model.model.sparse_arch.parameters(), {"lr": 0.05}
    )
    constraints = {t.name: ParameterConstraints(sharding_types=["table_wise"]) for t in data.table_configs(8)}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=WORLD, compute_device="cpu"), constraints=constraints
    )
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan, sharders=sharders)
    dense_opt = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda params: torch.optim.Adam(params, lr=3e-3)
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense_opt])
    pipeline = TrainPipelineSparseDist(dmp, optimizer, device=torch.device("cpu"))

    # Each rank trains on its own batches (data parallel for the dense part).
    batches = iter(data.batches(64, STEPS, start=rank * STEPS))
    losses = []
    while True:
        try:
            loss, _logits, _labels = pipeline.progress(batches)
        except StopIteration:
            break
        losses.append(float(loss))
    # DMP keeps each rank's BatchNorm statistics (the dot products' norm) its own; the
    # trainer copies rank 0's before evaluating and saving
    from torchrec_rankmixer.train.distributed import sync_batch_norm_stats

    norm = dmp.module.model.dot_products_norm.norm
    own_mean = norm.running_mean.clone()
    gathered = [torch.zeros_like(own_mean) for _ in range(WORLD)]
    dist.all_gather(gathered, own_mean)
    assert sync_batch_norm_stats(dmp) == 1
    dense = {
        k: v.detach().clone()
        for k, v in dmp.module.model.state_dict().items()
        if not k.startswith("sparse_arch") and v.is_floating_point()
    }
    sharding = {t: p.sharding_type for m in plan.plan.values() for t, p in m.items()}
    blocks = {type(b).__name__ for b in dmp.module.model.encoder.blocks}
    out[rank] = {"losses": losses, "dense": dense, "sharding": sharding, "blocks": blocks,
                 "stats_differed": not torch.equal(gathered[0], gathered[1])}
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    dist.destroy_process_group()


@pytest.mark.parametrize("block", [None, "rankmixer", "tokenmixer_large"])
def test_two_process_table_wise_training(block: Optional[str]) -> None:
    manager = mp.get_context("spawn").Manager()  # not forked from a threaded pytest (fork can deadlock it)
    out = manager.dict()
    mp.start_processes(_worker, args=(_free_port(), out, block), nprocs=WORLD, start_method="spawn")
    r0, r1 = out[0], out[1]
    assert set(r0["sharding"].values()) == {"table_wise"}
    assert r0["blocks"] == {"RankMixerBlock" if block == "rankmixer" else "TokenMixerLargeBlock"}
    for r in (r0, r1):
        assert len(r["losses"]) >= STEPS - 2
        first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
        assert last < first, (first, last)
    assert r0["stats_differed"] and r1["stats_differed"]  # before the sync: each rank's own batches
    assert r0["dense"].keys() == r1["dense"].keys() and len(r0["dense"]) > 0
    for k in r0["dense"]:
        torch.testing.assert_close(r0["dense"][k], r1["dense"][k], msg=f"ranks disagree on {k}")
