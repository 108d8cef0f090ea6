"""Export from a 2-rank table-wise sharded DMP model (gloo, CPU): the tables are
gathered to rank 0 and the artifact equals the plain model's export."""

import os
import socket
import sys

import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingType

    from tests.inference.helpers import artifact_inputs, small_model
    from torchrec_rankmixer.inference.artifact import load_artifact
    from torchrec_rankmixer.inference.export import export_model
    from torchrec_rankmixer.inference.quantize import build_inference_model

    plain = small_model(seed=11)
    reference = build_inference_model(plain)
    sharded = small_model(seed=11)
    constraints = {
        t: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
        for t in ("t_a", "t_b", "t_c")
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
    )
    sharders = [EmbeddingBagCollectionSharder()]
    plan = planner.collective_plan(sharded, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(sharded, device=torch.device("cpu"), plan=plan, sharders=sharders)
    # DMP re-initialises sharded tables: copy the plain model's rows into the local shards
    plain_sd = plain.state_dict()
    with torch.no_grad():
        for key, value in dmp.state_dict().items():
            if type(value).__name__ == "ShardedTensor":
                for shard in value.local_shards():
                    (r, c), (n, m) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(plain_sd[key][r : r + n, c : c + m])
    result = export_model(dmp, out_dir, artifact="torchscript")
    if rank == 0:
        args = artifact_inputs(6, 0)
        out = load_artifact(result.path).module(*args)
        torch.save({"equal": torch.equal(out, reference(*args))}, os.path.join(out_dir, "check.pt"))
    else:
        assert result.path == "" and result.module is None
    dist.barrier()  # rank 1 must not tear gloo down while rank 0 still exports (it aborted once)
    dist.destroy_process_group()


def test_sharded_dmp_export(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2)
    assert torch.load(tmp_path / "check.pt")["equal"]
