"""End-to-end sharded training speed: DLRM_RankMixer vs TorchRec DLRM_DCN.

Each rank (gloo, CPU, 127.0.0.1) wraps the model in ``DLRMTrain`` and
``DistributedModelParallel`` with table-wise sharding (embeddings trained by the fused
row-wise Adagrad in backward, dense parameters by Adam), and trains with
``TrainPipelineSparseDist`` on synthetic batches (per-rank batch ``--batch``). Reported:
global samples/s over the timed steps (after warm-up), per model and world size. The two
models run one after the other in the same processes (not interleaved step by step), so
a change in background load between them shows up in their ratio.

Usage::

    python benchmarks/bench_e2e.py --world-sizes 1 2 --steps 20 --batch 1024
"""

import argparse
import json
import os
import socket
import sys
import time
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("rankmixer", "dcnv2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(name: str, args: argparse.Namespace, data):  # noqa: ANN001, ANN202
    from torchrec.models.dlrm import DLRM_DCN, DLRMTrain
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from torchrec_rankmixer import DLRM_RankMixer, RankMixerConfig

    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=data.table_configs(args.emb_dim), device=torch.device("meta"))
    dense_sizes = [64, args.emb_dim]
    if name == "dcnv2":
        model = DLRM_DCN(ebc, data.dense_in_features, dense_sizes, args.dcn_over + [1],
                         dcn_num_layers=3, dcn_low_rank_dim=args.dcn_low_rank)
    else:
        cfg = RankMixerConfig(d_model=args.d_model, num_tokens=data.num_sparse_features + 1, num_layers=2)
        groups = {f: [f] for f in data.feature_names}
        model = DLRM_RankMixer(ebc, data.dense_in_features, dense_sizes, [args.d_model, 1],
                               rankmixer_config=cfg, feature_groups=groups, interaction="none",
                               validate_inputs=False)
    return DLRMTrain(model)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from torchrec_rankmixer import SyntheticClickData

    data = SyntheticClickData(num_sparse_features=args.features, num_embeddings=args.rows,
                              dense_in_features=13, seed=0)
    device = torch.device("cpu")
    results = {}
    for name in args.models:
        module = _build(name, args, data)
        sharder = EmbeddingBagCollectionSharder(
            fused_params={"optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": 0.02}
        )
        constraints = {c.name: ParameterConstraints(sharding_types=["table_wise"])
                       for c in data.table_configs(args.emb_dim)}
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
        )
        plan = planner.collective_plan(module, [sharder], dist.GroupMember.WORLD)
        model = DistributedModelParallel(module, device=device, sharders=[sharder], plan=plan)
        opt = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(model.named_parameters())),
            lambda params: torch.optim.Adam(params, lr=1e-3),
        )
        pipeline = TrainPipelineSparseDist(model, opt, device)
        total = args.warmup + args.steps
        batches = iter([data.batch(args.batch, rank + world * i) for i in range(total + 2)])
        for _ in range(args.warmup):
            pipeline.progress(batches)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            pipeline.progress(batches)
        dist.barrier()
        elapsed = time.perf_counter() - t0
        dense = sum(p.numel() for n, p in module.named_parameters() if "embedding_bag" not in n)
        results[name] = {"samples_per_s": world * args.batch * args.steps / elapsed, "dense_params": dense}
    if rank == 0:
        out.update(results)
    dist.barrier()  # neither rank tears gloo down while the other still uses it
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world-sizes", nargs="+", type=int, default=[1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, default=1024, help="per-rank batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--features", type=int, default=26)
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--emb-dim", type=int, default=64)
    p.add_argument("--d-model", type=int, default=108, help="RankMixer D (divisible by T = features + 1)")
    p.add_argument("--dcn-over", type=int, nargs="+", default=[1024, 1024, 512])
    p.add_argument("--dcn-low-rank", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="total intra-op threads, split across ranks")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows: List[Dict] = []
    print("| world size | model | dense params | samples/s (global) |\n|---|---|---|---|")
    for world in args.world_sizes:
        with mp.Manager() as manager:
            out = manager.dict()
            mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world,
                               start_method="spawn")
            res = dict(out)
        for name in args.models:
            r = res[name]
            rows.append({"world": world, "model": name, **r})
            print(f"| {world} | {name} | {r['dense_params'] / 1e6:.2f}M | {r['samples_per_s']:.0f} |", flush=True)
        ratio = res["rankmixer"]["samples_per_s"] / res["dcnv2"]["samples_per_s"] if len(res) == 2 else float("nan")
        print(f"world {world}: RankMixer / DCNv2 samples/s = {ratio:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
