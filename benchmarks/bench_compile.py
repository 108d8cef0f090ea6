"""Compiled dense path vs eager: training samples/s of rankmixer-train's model on CPU.

Both models are what ``rankmixer-train`` builds from its settings (``--set`` overrides as
on its command line; default: the default model): the recipe (``model_spec``), the
TrainModule, TorchRec's planner + DistributedModelParallel (fused row-wise Adagrad
tables, RMSprop dense), TrainPipelineSparseDist on the synthetic source. One model runs
eager, the other with ``compile_dense_path()`` (``train.compile=true``). After warm-up
(the compiled one compiles then), the two train in alternating windows of ``--window``
steps, ``--rounds`` times; each reports its fastest window.

Usage::

    python benchmarks/bench_compile.py --rounds 5 --window 30
    python benchmarks/bench_compile.py --set data.batch_size=1024
"""

import argparse
import json
import os
import sys
import time
from typing import Dict

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from torchrec_rankmixer.data.sources import make_source  # noqa: E402
from torchrec_rankmixer.train.build import TrainModule, model_spec  # noqa: E402
from torchrec_rankmixer.train.config import load_config  # noqa: E402
from torchrec_rankmixer.train.distributed import build_optimizer, init_distributed, shard_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", action="append", default=[], help="rankmixer-train setting, key=value")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--window", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mode", default=None, help="torch.compile mode (default: inductor's default)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    cfg = load_config(overrides=["train.device=cpu"] + args.set)
    env = init_distributed("cpu")
    torch.set_num_threads(args.threads)
    source = make_source(cfg.data, cfg.model.task == "esmm", 0, 1)
    spec = model_spec(cfg, source)
    pipelines, cursor = {}, {}
    for name in ("eager", "compiled"):
        torch.manual_seed(cfg.train.seed)
        model = spec.build(env.device, False, table_device=torch.device("meta"))
        if name == "compiled":
            model.compile_dense_path(args.mode)
        dmp = shard_model(TrainModule(model, cfg.model.task, 0.0, None), cfg, env)
        pipelines[name] = TrainPipelineSparseDist(dmp, build_optimizer(dmp, cfg.optim), env.device,
                                                  execute_all_batches=True)
        cursor[name] = 0

    def run(name: str, steps: int) -> float:
        batches = source.train_batches(cursor[name], 0, 1, steps + 2)
        cursor[name] += steps + 2
        it = iter(batches)
        start = time.perf_counter()
        for _ in range(steps):
            pipelines[name].progress(it)
        return time.perf_counter() - start

    compile_s = {name: run(name, args.warmup) for name in pipelines}
    best: Dict[str, float] = {name: float("inf") for name in pipelines}
    for _ in range(args.rounds):
        for name in pipelines:
            best[name] = min(best[name], run(name, args.window) / args.window)
    batch = cfg.data.batch_size
    rows = {n: {"samples_per_s": batch / s, "step_ms": 1e3 * s, "warmup_s": compile_s[n]} for n, s in best.items()}
    ratio = rows["compiled"]["samples_per_s"] / rows["eager"]["samples_per_s"]
    print(f"# threads {torch.get_num_threads()}, torch {torch.__version__}, batch {batch}, "
          f"dense params {sum(p.numel() for p in spec.build().dense_parameters()):,}")
    print("| dense path | samples/s | step ms | warm-up s (compile included) |\n|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['samples_per_s']:.0f} | {r['step_ms']:.2f} | {r['warmup_s']:.1f} |")
    print(f"compiled / eager samples/s = {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": ratio, "settings": args.set, "threads": args.threads}, f, indent=1)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
