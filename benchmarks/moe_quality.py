"""Sparse-MoE quality on the synthetic click data: DTSI+ReLU vs ReLU vs top-k, per target.

For each (router, target active ratio) it trains DLRM_RankMixer (MoE FFN) with
``train_simple`` and reports, on held-out batches:

- AUC with sparse inference (h_infer, only active experts), AUC with the same gates run
  densely (every expert), and for DTSI the "dense-gated" AUC (h_train's gates, every
  expert), i.e. what the model scores before sparsification;
- the measured inference active ratio, utilisation range and dead experts;
- whether eval outputs depend on h_infer (perturb it) and not on h_train.

Usage (numbers in docs/moe.md)::

    python benchmarks/moe_quality.py --routers dtsi topk relu --targets 0.5 0.25 0.125
"""

import argparse
import json
import time
from typing import Dict, List, Optional

import torch
from torchrec import EmbeddingBagCollection

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.models.defaults import default_config
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE, configure_moe_inference, reset_statistics
from torchrec_rankmixer.modules.moe.calibration import calibrate_on_batches
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET
from torchrec_rankmixer.train.simple import evaluate, train_simple
from torchrec_rankmixer.utils.metrics import binary_auc


def build(data: SyntheticClickData, router: str, target: float, args: argparse.Namespace) -> DLRM_RankMixer:
    base = default_config(min(data.num_sparse_features, 7) + 1)
    cfg = base if router == "dense" else base.with_updates(
        use_moe=True, moe_router=router, moe_num_experts=args.experts,
        moe_expert_hidden=args.hidden, moe_target_active_ratio=target,
        moe_l1_kp=args.l1_kp, moe_l1_ki=args.l1_ki, moe_dense_path_prob=args.dense_path_prob,
        moe_offset_rate=args.offset_rate, moe_offset_per=args.offset_per, moe_train_gate=args.train_gate,
        moe_path_draw=args.path_draw,
    )
    emb = args.embedding_dim
    ebc = EmbeddingBagCollection(tables=data.table_configs(emb))
    return DLRM_RankMixer(
        embedding_bag_collection=ebc, dense_in_features=data.dense_in_features,
        dense_arch_layer_sizes=[64, emb], over_arch_layer_sizes=[64, 1], rankmixer_config=cfg,
        interaction="none",  # the encoder alone, as docs/moe.md measured it
    )


def _eval_logits(model: torch.nn.Module, batches: List) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.dense_features, b.sparse_features)[:, 0] for b in batches])


def paired_gap_se(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, rounds: int = 200) -> float:
    """Bootstrap standard error of AUC(a) - AUC(b) over the same resampled eval rows."""
    g = torch.Generator().manual_seed(0)
    n, gaps = labels.numel(), []
    for _ in range(rounds):
        i = torch.randint(0, n, (n,), generator=g)
        gaps.append(binary_auc(a[i], labels[i]) - binary_auc(b[i], labels[i]))
    return float(torch.tensor(gaps).std())


def _perturbation(model: torch.nn.Module, batches: List, which: str) -> float:
    """Mean |change| of eval logits when every MoE's ``which`` router weight is perturbed."""
    base = _eval_logits(model, batches)
    saved = []
    for m in model.modules():
        if isinstance(m, PerTokenSparseMoE) and getattr(m, which) is not None:
            w = getattr(m, which).weight
            saved.append((w, w.detach().clone()))
            with torch.no_grad():
                w.add_(torch.randn_like(w) * w.std())
    changed = _eval_logits(model, batches)
    with torch.no_grad():
        for w, old in saved:
            w.copy_(old)
    return float((changed - base).abs().mean())


def run(router: str, target: float, args: argparse.Namespace) -> Dict[str, object]:
    torch.manual_seed(args.seed)
    data = SyntheticClickData(seed=args.seed)
    model = build(data, router, target, args)
    start = time.perf_counter()
    def show(step: int, stats: Dict[str, float]) -> None:
        if args.verbose:
            keys = ("active_ratio", "l1_coef", "train_router_active_ratio")
            per_layer = {k: [round(v, 3) for n, v in stats.items() if n.endswith("." + k)] for k in keys}
            print(f"  step {step}: {per_layer}", flush=True)

    res = train_simple(model, data.batches(args.batch_size, args.steps), log_every=args.log_every,
                       lr=args.lr, on_stats=show)
    train_s = time.perf_counter() - start
    evals = list(data.batches(1024, args.eval_batches, start=EVAL_OFFSET))
    labels = torch.cat([b.labels for b in evals])
    row: Dict[str, object] = {"router": router, "target": target, "seed": args.seed, "train_s": round(train_s, 1)}
    if router == "dense":
        row["auc_sparse"] = evaluate(model, evals)[0]
        return row
    last = res.stats[-1] if res.stats else {}
    row["train_active_ratio"] = sum(v for k, v in last.items() if k.endswith(".active_ratio")) / max(
        1, sum(1 for k in last if k.endswith(".active_ratio")))
    configure_moe_inference(model, execution="sparse")
    if router != "topk" and args.calibrate_batches > 0:
        # serving step: held-out *training* batches (after the ones trained on), not eval data
        reset_statistics(model)
        row["auc_sparse_uncalibrated"] = evaluate(model, evals)[0]
        utils = torch.stack([m.expert_utilisation() for m in model.modules() if isinstance(m, PerTokenSparseMoE)])
        row["infer_active_ratio_uncalibrated"] = float(utils.mean())
        calib = data.batches(args.batch_size, args.calibrate_batches, start=args.steps)
        report = calibrate_on_batches(model, calib)
        row["calib_max_abs_shift"] = max(r["max_abs_shift"] for r in report)
    reset_statistics(model)
    sparse_logits = _eval_logits(model, evals)
    row["auc_sparse"] = binary_auc(sparse_logits, labels)
    moes = [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]
    utils = torch.stack([m.expert_utilisation() for m in moes])  # (L, T, E)
    row["infer_active_ratio"] = float(utils.mean())
    row["util_min"], row["util_max"] = float(utils.min()), float(utils.max())
    row["dead_experts"] = int((utils == 0).sum())
    configure_moe_inference(model, execution="dense")
    row["auc_dense_same_gates"] = evaluate(model, evals)[0]
    if router == "dtsi":
        configure_moe_inference(model, execution="dense", router="train")
        dense_logits = _eval_logits(model, evals)
        row["auc_dense_gated_htrain"] = binary_auc(dense_logits, labels)
        row["gap"] = row["auc_sparse"] - row["auc_dense_gated_htrain"]  # type: ignore[operator]
        row["gap_se"] = paired_gap_se(sparse_logits, dense_logits, labels)
    configure_moe_inference(model, execution="sparse")
    row["perturb_h_infer"] = _perturbation(model, evals[:2], "router_infer")
    row["perturb_h_train"] = _perturbation(model, evals[:2], "router_train") if router == "dtsi" else None
    return row


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routers", nargs="+", default=["dtsi", "topk"], choices=["dtsi", "relu", "topk", "dense"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25, 0.125])
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64, help="expert hidden width h")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=40)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="append rows to this JSON-lines file")
    p.add_argument("--verbose", action="store_true", help="print routing statistics while training")
    p.add_argument("--l1-kp", type=float, default=0.5)
    p.add_argument("--l1-ki", type=float, default=0.01)
    p.add_argument("--dense-path-prob", type=float, default=0.5)
    p.add_argument("--offset-rate", type=float, default=0.01, help="moe_offset_rate")
    p.add_argument("--offset-per", default="expert", choices=["expert", "token"], help="moe_offset_per")
    p.add_argument("--train-gate", default="softplus", choices=["relu", "softplus"], help="moe_train_gate")
    p.add_argument("--path-draw", default="sample", choices=["sample", "token"], help="moe_path_draw")
    p.add_argument("--calibrate-batches", type=int, default=16,
                   help="held-out training batches for the router-bias calibration (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared box)")
    args = p.parse_args(argv)
    args.layers = 2  # default_config's L
    torch.set_num_threads(args.threads)
    for router in args.routers:
        for target in args.targets if router != "dense" else [1.0]:
            row = run(router, target, args)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
