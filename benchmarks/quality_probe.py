"""Quality probe: train baselines and RankMixer variants on the same data, budget and
embeddings; one JSON line per (data set, model, seed) with valid and test AUC / logloss.

Data sets:

- ``synthetic``: ``SyntheticClickData(num_sparse_features=8, num_embeddings=1000,
  dense_in_features=4, num_interactions=6, seed=0)`` (benchmarks/synthetic_quality.py's);
- ``affinity``: :class:`LatentAffinityData` (seed 0); ``context_rules``:
  :class:`ContextRuleData` (seed 0);
- ``frappe``: Frappe_x1 (BARS split) read from ``--frappe-dir`` when it exists.

Synthetic protocol: ``--steps`` Adam steps at batch ``--batch`` on batches 0..; valid =
``--valid-batches`` x 4096 from batch index 1,000,000, test = ``--test-batches`` x 4096
from 2,000,000 (disjoint by index); valid AUC every ``--eval-every`` steps, the best-valid
weights are restored and scored on test once. Frappe protocol: benchmarks/frappe.py's
(BARS: batch 4096, lr 1e-3, emb L2 0.05 on whole tables, clip 10, lr /10 on a stalled
epoch, stop after 2 stalls in a row, restore the best-valid weights); the embedding dim
is 10 and the MLPs [400, 400, 400] there.

Every model gets the same inputs (the Frappe ones get a constant dense column, as
TorchRec's DLRM/DLRM_DCN require one), the same EBC tables and seed, the same optimiser.

Usage::

    python benchmarks/quality_probe.py --datasets affinity context_rules synthetic \
        --models dnn dlrm dcnv2 rankmixer rm:pre --seeds 1 2 --out results/probe.jsonl
"""

import argparse
import copy
import datetime
import json
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import kjt_from_ids, machine_line  # noqa: E402
from benchmarks.probe_models import (  # noqa: E402
    EMB_INITS, ProbeSizes, build, dense_params, embedding_params, lr_at,
)

from torchrec_rankmixer.data.synthetic import SyntheticClickData  # noqa: E402
from torchrec_rankmixer.data.synthetic_families import (  # noqa: E402
    ContextRuleData, LatentAffinityData, oracle_auc,
)
from torchrec_rankmixer.utils.metrics import binary_auc, binary_logloss  # noqa: E402

SYNTHETIC = {
    "synthetic": lambda: SyntheticClickData(num_sparse_features=8, num_embeddings=1000,
                                            dense_in_features=4, num_interactions=6, seed=0),
    "affinity": lambda: LatentAffinityData(seed=0),
    "context_rules": lambda: ContextRuleData(seed=0),
}
VALID_START, TEST_START, EVAL_BATCH = 1_000_000, 2_000_000, 4096
Arrays = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # dense [N, d], ids [N, F], labels [N]


def _eval_arrays(data, start: int, n: int) -> Arrays:
    parts = [data.sample(EVAL_BATCH, start + i) for i in range(n)]
    labels = torch.cat([p[2] if p[2].dim() == 1 else p[2][:, 0] for p in parts])
    return torch.cat([p[0] for p in parts]), torch.cat([p[1][:, :, 0] for p in parts]), labels


@torch.no_grad()
def predict(model: nn.Module, arrays: Arrays, keys: List[str]) -> torch.Tensor:
    model.eval()
    dense, ids, _ = arrays
    out = [model(dense[s:s + 16384], kjt_from_ids(ids[s:s + 16384], keys))[:, 0] for s in range(0, len(ids), 16384)]
    model.train()
    return torch.cat(out)


def _metrics(model: nn.Module, arrays: Arrays, keys: List[str]) -> Tuple[float, float]:
    logits = predict(model, arrays, keys)
    return binary_auc(logits, arrays[2]), binary_logloss(logits, arrays[2])


def _step(model, opt, dense, kjt, labels, reg: Callable[[], torch.Tensor], clip: float) -> float:
    loss = nn.functional.binary_cross_entropy_with_logits(model(dense, kjt)[:, 0], labels) + reg()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return float(loss.detach())


def run_synthetic(name: str, data, model: nn.Module, args, seed: int, cache: Dict) -> Dict:
    keys = data.feature_names
    if "valid" not in cache:
        cache["valid"] = _eval_arrays(data, VALID_START, args.valid_batches)
        cache["test"] = _eval_arrays(data, TEST_START, args.test_batches)
    lr = getattr(model, "probe_lr", None) or args.lr
    warmup = getattr(model, "probe_warmup", 0) or args.warmup
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = (-1.0, 0, None)
    curve = []
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, warmup)
        b = data.batch(args.batch, step)
        _step(model, opt, b.dense_features, b.sparse_features, b.labels if b.labels.dim() == 1 else b.labels[:, 0],
              lambda: 0.0, args.clip)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            auc = _metrics(model, cache["valid"], keys)[0]
            curve.append(round(auc, 5))
            if auc > best[0]:
                best = (auc, step + 1, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    v_auc, v_ll = _metrics(model, cache["valid"], keys)
    t_auc, t_ll = _metrics(model, cache["test"], keys)
    return {"valid_auc": v_auc, "valid_logloss": v_ll, "test_auc": t_auc, "test_logloss": t_ll,
            "best_step": best[1], "steps": args.steps, "batch": args.batch, "lr": lr, "warmup": warmup,
            "valid_curve": curve}


def run_frappe(model: nn.Module, frappe: Dict, args, seed: int) -> Dict:
    from benchmarks.frappe import BATCH, EMB_L2, FIELDS, LR, MAX_GRAD_NORM, PlateauSchedule

    lr = getattr(model, "probe_lr", None) or LR
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    tables = embedding_params(model)  # one table per field, in FIELDS order
    rows: List[torch.Tensor] = []  # the batch's unique ids per field (--emb-l2-rows batch)

    def reg() -> torch.Tensor:
        if args.emb_l2_rows == "table":  # FuxiCTR: every row of every table, every step
            return EMB_L2 / 2 * sum(p.pow(2).sum() for p in tables)
        return EMB_L2 / 2 * sum(p[r].pow(2).sum() for p, r in zip(tables, rows))
    split = {s: (torch.ones(len(frappe[s][0]), 1), frappe[s][0], frappe[s][1]) for s in ("train", "valid", "test")}
    _, train_ids, train_y = split["train"]
    gen = torch.Generator().manual_seed(seed)
    schedule = PlateauSchedule(lr, "fuxictr")
    best_state, best_epoch, curve = None, 0, []
    for epoch in range(1, args.max_epochs + 1):
        perm = torch.randperm(len(train_ids), generator=gen)
        for s in range(0, len(perm), BATCH):
            idx = perm[s:s + BATCH]
            rows[:] = [train_ids[idx, f].unique() for f in range(len(FIELDS))]
            _step(model, opt, torch.ones(len(idx), 1), kjt_from_ids(train_ids[idx], FIELDS), train_y[idx],
                  reg, MAX_GRAD_NORM)
        auc = _metrics(model, split["valid"], FIELDS)[0]
        curve.append(round(auc, 5))
        print(f"  frappe epoch {epoch} valid AUC {auc:.5f} lr {schedule.lr:g}", flush=True)
        improved, stop = schedule.step(auc)
        if improved:
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
        if stop:
            break
        for g in opt.param_groups:
            g["lr"] = schedule.lr
    model.load_state_dict(best_state)
    v_auc, v_ll = _metrics(model, split["valid"], FIELDS)
    t_auc, t_ll = _metrics(model, split["test"], FIELDS)
    return {"valid_auc": v_auc, "valid_logloss": v_ll, "test_auc": t_auc, "test_logloss": t_ll,
            "best_epoch": best_epoch, "epochs_run": len(curve), "lr": lr, "valid_curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["synthetic", "affinity", "context_rules", "frappe"],
                   choices=[*SYNTHETIC, "frappe"])
    p.add_argument("--models", nargs="+", default=["dnn", "dlrm", "dcnv2", "rankmixer"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=5e-3, help="Adam lr on synthetic data (Frappe: BARS's 1e-3)")
    p.add_argument("--warmup", type=int, default=0, help="linear warm-up steps (synthetic)")
    p.add_argument("--clip", type=float, default=0.0, help="grad-norm clip on synthetic data (0: none)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--valid-batches", type=int, default=12)
    p.add_argument("--test-batches", type=int, default=25)
    p.add_argument("--emb-dim", type=int, default=16)
    p.add_argument("--emb-init", default="torchrec", choices=EMB_INITS)
    p.add_argument("--max-epochs", type=int, default=100, help="Frappe epoch cap")
    p.add_argument("--emb-l2-rows", default="table", choices=["table", "batch"],
                   help="Frappe embedding L2 on whole tables (FuxiCTR) or on the batch's rows only")
    p.add_argument("--frappe-dir", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                         "..", "shared", "data", "frappe_x1"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oracle", action="store_true", help="also write each synthetic set's oracle test AUC")
    p.add_argument("--out", required=True, help="append one JSON line per run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    common = {"command": " ".join(["python"] + sys.argv), "date": datetime.date.today().isoformat(),
              "machine": machine_line()}

    def emit(row: Dict) -> None:
        row = {**row, **common}
        print(json.dumps({k: v for k, v in row.items() if k not in ("command", "machine")}), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")

    for ds in args.datasets:
        if ds == "frappe":
            if not os.path.isdir(args.frappe_dir):
                print(f"skipping frappe: {args.frappe_dir} not found", flush=True)
                continue
            from benchmarks.frappe import load_frappe, tables_for

            frappe = load_frappe(args.frappe_dir)
            tables, dense_in, sizes = tables_for(frappe["vocab"][0]), 1, ProbeSizes(over_hidden=[400, 400, 400])
        else:
            data = SYNTHETIC[ds]()
            cache: Dict = {}
            tables, dense_in, sizes = data.table_configs(args.emb_dim), data.dense_in_features, ProbeSizes()
            if args.oracle:
                emit({"dataset": ds, "model": "oracle",
                      "test_auc": oracle_auc(data, EVAL_BATCH, args.test_batches, TEST_START),
                      "valid_auc": oracle_auc(data, EVAL_BATCH, args.valid_batches, VALID_START)})
        for seed in args.seeds:
            for name in args.models:
                model = build(name, tables, dense_in, sizes, seed, args.emb_init)
                t0 = time.time()
                res = run_frappe(model, frappe, args, seed) if ds == "frappe" else \
                    run_synthetic(name, data, model, args, seed, cache)
                extra = {"emb_l2_rows": args.emb_l2_rows} if ds == "frappe" else {}
                emit({"dataset": ds, "model": name, "seed": seed, "emb_init": args.emb_init, **extra, **res,
                      "dense_params": dense_params(model), "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
