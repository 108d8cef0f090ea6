"""Quality on the synthetic click data: the paper's ablations, and AUC vs parameters.

Data: ``SyntheticClickData(num_sparse_features=8, num_embeddings=1000, dense_in_features=4,
num_interactions=6, seed=0)``; every model trains ``--steps`` Adam steps (lr 1e-3) at
batch ``--batch`` on batches 0.., and is evaluated on ``--eval-batches`` held-out batches
(indices from 1,000,000 on). Embedding dim 16 for every model, same EBC init per seed.

Usage::

    python benchmarks/synthetic_quality.py ablations --seeds 1 2 --out results/syn_ablations.jsonl
    python benchmarks/synthetic_quality.py scaling --seeds 1 --out results/syn_scaling.jsonl
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ModelSpec, build_model, dense_param_count  # noqa: E402
from benchmarks.variants import VARIANTS, rankmixer_variant  # noqa: E402

from torchrec_rankmixer import SyntheticClickData  # noqa: E402
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET  # noqa: E402
from torchrec_rankmixer.train.simple import train_simple  # noqa: E402

EMB_DIM = 16
DATA = SyntheticClickData(num_sparse_features=8, num_embeddings=1000, dense_in_features=4,
                          num_interactions=6, seed=0)
# RankMixer: 8 features -> 7 auto tokens + 1 dense token = T 8 (H = T).
RANKMIXER_SIZES: Dict[str, Tuple[int, int]] = {"xs": (16, 1), "s": (32, 2), "m": (64, 2), "l": (128, 2)}
DCN_SIZES: Dict[str, Tuple[List[int], int]] = {
    "xs": ([64, 32], 8), "s": ([128, 64], 16), "m": ([256, 128], 32), "l": ([512, 256], 64),
}


def rankmixer_spec(variant: str, d_model: int, layers: int) -> ModelSpec:
    cfg = rankmixer_variant(variant, d_model=d_model, num_tokens=8, num_layers=layers)
    return ModelSpec(rankmixer=cfg, rankmixer_over=[d_model])


def train_eval(name: str, spec: ModelSpec, seed: int, args: argparse.Namespace) -> Dict:
    model = build_model(name, DATA.table_configs(EMB_DIM), DATA.dense_in_features, spec, seed)
    t0 = time.time()
    result = train_simple(
        model, DATA.batches(args.batch, args.steps),
        eval_batches=lambda: DATA.batches(2048, args.eval_batches, start=EVAL_OFFSET),
        lr=1e-3, log_every=max(args.steps, 1),
    )
    return {"model": name, "seed": seed, "auc": result.eval_auc, "logloss": result.eval_logloss,
            "dense_params": dense_param_count(model), "seconds": round(time.time() - t0, 1),
            "steps": args.steps, "batch": args.batch}


def jobs(args: argparse.Namespace) -> List[Tuple[str, str, ModelSpec]]:
    if args.what == "ablations":
        variants = args.variants or list(VARIANTS)
        return [("rankmixer", v, rankmixer_spec(v, 32, 2)) for v in variants]
    out = []
    for size in args.sizes:
        d, layers = RANKMIXER_SIZES[size]
        out.append(("rankmixer", f"size_{size}", rankmixer_spec("full", d, layers)))
        hidden, rank = DCN_SIZES[size]
        out.append(("dcnv2", f"size_{size}", ModelSpec(hidden=hidden, dcn_layers=3, dcn_low_rank=rank)))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["ablations", "scaling"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS))
    p.add_argument("--sizes", nargs="+", default=list(RANKMIXER_SIZES), choices=list(RANKMIXER_SIZES))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--eval-batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="append one JSON line per run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        for name, tag, spec in jobs(args):
            row = {"what": args.what, "tag": tag, **train_eval(name, spec, seed, args)}
            if name == "rankmixer" and spec.rankmixer is not None:
                row["encoder_flops"] = spec.rankmixer.flops_per_sample(exact=True)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
