"""Frappe_x1 under the BARS protocol: RankMixer vs DCNv2 vs DLRM vs DNN (and ablations).

Protocol (BARS / FuxiCTR settings for Frappe): embedding dim 10, batch 4096, Adam lr 1e-3,
embedding L2 0.05 (FuxiCTR's ``embedding_regularizer``: ``0.05/2 * ||E||^2`` over every
table, added to the loss each step), gradient norm clipped at 10, evaluate valid AUC after
every epoch; an epoch that does not beat the best by 1e-6 divides the lr by 10 (floor 1e-6)
and counts one stall, an epoch that does resets the count; stop at 2 consecutive stalls
(patience 2); restore the best-valid weights and evaluate test once. This is FuxiCTR's
``checkpoint_and_earlystop`` + ``lr_decay`` (``--protocol fuxictr``, the default).
``--protocol v0`` is the rule this script had before (stalls never reset, no clipping),
kept only so results recorded with it (docs/benchmarks.md section 4) can be reproduced.

Vocabulary: per field, ids seen in train map to 1..n; anything else to 0 (OOV row), as
FuxiCTR does. The data is read from the path given; nothing derived from it is written
except the per-run metrics (JSON lines).

Usage::

    python benchmarks/frappe.py /work/shared/data/frappe_x1 --models rankmixer dcnv2 dlrm dnn \
        --seeds 1 2 3 --out results/frappe.jsonl
    python benchmarks/frappe.py DATA --models rankmixer --variant no_mixing --seeds 1
"""

import argparse
import copy
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
import yaml
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import MODEL_NAMES, ModelSpec, build_model, dense_param_count, kjt_from_ids  # noqa: E402
from benchmarks.variants import VARIANTS, rankmixer_variant  # noqa: E402
from torchrec.modules.embedding_configs import EmbeddingBagConfig  # noqa: E402

from torchrec_rankmixer.modules.moe import (  # noqa: E402
    PerTokenSparseMoE,
    configure_moe_inference,
    reset_statistics,
)
from torchrec_rankmixer.utils.metrics import binary_auc, binary_logloss  # noqa: E402

FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]
EMB_DIM, BATCH, LR, EMB_L2, PATIENCE = 10, 4096, 1e-3, 0.05, 2
MIN_DELTA, MIN_LR, MAX_GRAD_NORM = 1e-6, 1e-6, 10.0  # FuxiCTR's defaults
PROTOCOLS = ("fuxictr", "v0")


class PlateauSchedule:
    """Early stopping with lr decay on plateau, as FuxiCTR (``protocol="fuxictr"``) or as
    this script did before (``"v0"``: stalls are never reset, lr has no floor).

    ``step(valid_auc)`` returns ``(improved, stop)`` and updates ``lr``.
    """

    def __init__(self, lr: float, protocol: str = "fuxictr", patience: int = PATIENCE) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol ({protocol!r}) must be one of {list(PROTOCOLS)}")
        self.lr, self.protocol, self.patience = lr, protocol, patience
        self.best, self.stalls = -float("inf"), 0

    def step(self, valid_auc: float) -> Tuple[bool, bool]:
        fux = self.protocol == "fuxictr"
        improved = valid_auc >= self.best + MIN_DELTA if fux else valid_auc > self.best
        if improved:
            self.best = valid_auc
            if fux:
                self.stalls = 0
            return True, False
        self.stalls += 1
        if self.stalls >= self.patience:
            return False, True
        self.lr = max(self.lr / 10, MIN_LR) if fux else self.lr / 10
        return False, False


def read_split(path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, 10] raw global ids, labels [N]) from one BARS CSV."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path)
    labels = torch.tensor(table.column("label").to_numpy(), dtype=torch.float32)
    ids = torch.stack([torch.tensor(table.column(f).to_numpy(), dtype=torch.long) for f in FIELDS], 1)
    return ids, labels


def load_frappe(root: str) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Train/valid/test with ids remapped per field to the train vocabulary (0 = OOV)."""
    raw = {s: read_split(os.path.join(root, f"{s}.csv")) for s in ("train", "valid", "test")}
    train_ids = raw["train"][0]
    out = {}
    lookups = []
    for f in range(len(FIELDS)):
        vocab = torch.unique(train_ids[:, f])
        lut = torch.zeros(int(max(r[0][:, f].max() for r in raw.values())) + 1, dtype=torch.long)
        lut[vocab] = torch.arange(1, len(vocab) + 1)
        lookups.append(lut)
    for split, (ids, labels) in raw.items():
        mapped = torch.stack([lookups[f][ids[:, f]] for f in range(len(FIELDS))], 1)
        out[split] = (mapped, labels)
    out["vocab"] = (torch.tensor([len(lut.unique()) for lut in lookups]), torch.empty(0))
    return out


def tables_for(vocab_sizes: torch.Tensor) -> List[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=EMB_DIM, num_embeddings=int(n) + 1, feature_names=[f])
        for f, n in zip(FIELDS, vocab_sizes.tolist())
    ]


def frappe_spec(
    variant: str, overrides: Optional[Dict[str, object]] = None,
    rankmixer_over: Optional[List[int]] = None,
) -> ModelSpec:
    """Frappe sizes: one token per field (T=10), D=40 (4 per head), L=2, k=4, OverArch
    [256, 1]; ``overrides`` are RankMixerConfig fields applied on top (``--rankmixer-set``)
    and ``rankmixer_over`` replaces the OverArch hidden sizes (``--rankmixer-over``), both
    for tuning on valid."""
    config = rankmixer_variant(variant, d_model=40, num_tokens=10, num_layers=2)
    return ModelSpec(
        hidden=[400, 400, 400], dcn_layers=3, dcn_low_rank=64,
        rankmixer=config.with_updates(**(overrides or {})),
        rankmixer_over=list(rankmixer_over or [256]), feature_groups={f: [f] for f in FIELDS},
    )


def embedding_l2(model: nn.Module) -> torch.Tensor:
    return sum(p.pow(2).sum() for n, p in model.named_parameters() if "embedding_bag_collection" in n)


@torch.no_grad()
def predict(model: nn.Module, ids: torch.Tensor, dense_in: int) -> torch.Tensor:
    model.eval()
    out = []
    for s in range(0, len(ids), 16384):
        chunk = ids[s : s + 16384]
        dense = torch.ones(len(chunk), dense_in)
        out.append(model(dense, kjt_from_ids(chunk, FIELDS))[:, 0])
    model.train()
    return torch.cat(out)


def _moe_report(model: nn.Module, data: Dict, dense_in: int, test_auc: float) -> Dict[str, float]:
    """For a Sparse-MoE RankMixer: the test pass's h_infer active ratio (uncalibrated:
    this loop has no calibration step) and, for DTSI, the dense-gated test AUC (h_train's
    gates, every expert) of the same model; empty for other models."""
    moes = [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]
    if not moes:
        return {}
    util = torch.stack([m.expert_utilisation() for m in moes])  # (L, T, E)
    out = {"moe_test_active_ratio": float(util.mean()), "moe_dead_experts": int((util == 0).sum())}
    if moes[0].router == "dtsi":
        configure_moe_inference(model, execution="dense", router="train")
        dense_gated = predict(model, data["test"][0], dense_in)
        configure_moe_inference(model, execution="sparse")
        out["test_auc_dense_gated"] = binary_auc(dense_gated, data["test"][1])
        out["test_auc_gap"] = test_auc - out["test_auc_dense_gated"]
    return out


def run(
    data: Dict, name: str, variant: str, seed: int, max_epochs: int, log: bool = True,
    overrides: Optional[Dict[str, object]] = None, lr: float = LR,
    rankmixer_over: Optional[List[int]] = None, protocol: str = "fuxictr",
) -> Dict:
    """Train one model under the BARS protocol; returns the metrics row. ``lr`` other
    than :data:`LR` departs from BARS (tuning only; the row records it); ``protocol``
    picks the stopping rule (:class:`PlateauSchedule`; ``"fuxictr"`` also clips)."""
    dense_in = 0 if name in ("rankmixer", "dnn") else 1  # TorchRec DLRM/DCN need a dense arch
    spec = frappe_spec(variant, overrides, rankmixer_over)
    model = build_model(name, tables_for(data["vocab"][0]), dense_in, spec, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    train_ids, train_y = data["train"]
    gen = torch.Generator().manual_seed(seed)
    schedule = PlateauSchedule(lr, protocol)
    best_auc, best_state, best_epoch = -1.0, None, 0
    history = []
    t_start = time.time()
    for epoch in range(1, max_epochs + 1):
        perm = torch.randperm(len(train_ids), generator=gen)
        t0 = time.time()
        for s in range(0, len(perm), BATCH):
            idx = perm[s : s + BATCH]
            ids = train_ids[idx]
            logits = model(torch.ones(len(idx), dense_in), kjt_from_ids(ids, FIELDS))[:, 0]
            loss = loss_fn(logits, train_y[idx]) + EMB_L2 / 2 * embedding_l2(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if protocol == "fuxictr":
                nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            opt.step()
        valid_auc = binary_auc(predict(model, data["valid"][0], dense_in), data["valid"][1])
        history.append(round(valid_auc, 5))
        if log:
            print(f"  [{name}/{variant} s{seed}] epoch {epoch} valid AUC {valid_auc:.5f} "
                  f"lr {schedule.lr:g} ({time.time() - t0:.0f}s)", flush=True)
        improved, stop = schedule.step(valid_auc)
        if improved:
            best_auc, best_epoch, best_state = valid_auc, epoch, copy.deepcopy(model.state_dict())
        if stop:
            break
        for g in opt.param_groups:
            g["lr"] = schedule.lr
    model.load_state_dict(best_state)
    reset_statistics(model)
    test_logits = predict(model, data["test"][0], dense_in)
    test_auc = binary_auc(test_logits, data["test"][1])
    return {
        **_moe_report(model, data, dense_in, test_auc),
        "model": name, "variant": variant, "seed": seed, "protocol": protocol, "best_epoch": best_epoch,
        "epochs_run": len(history), "valid_auc": best_auc,
        "test_auc": test_auc,
        "test_logloss": binary_logloss(test_logits, data["test"][1]),
        "dense_params": dense_param_count(model), "seconds": round(time.time() - t_start, 1),
        "valid_history": history,
        **({"encoder_flops": spec.rankmixer.flops_per_sample(exact=True)} if name == "rankmixer" else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", help="directory holding train.csv, valid.csv, test.csv (BARS Frappe_x1)")
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--variant", default="full", choices=sorted(VARIANTS),
                   help="RankMixer ablation variant (other models ignore it)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--protocol", default="fuxictr", choices=PROTOCOLS,
                   help="stopping rule: fuxictr (BARS, default) or v0 (the earlier rule; "
                        "reproduces results recorded with it)")
    p.add_argument("--out", default="results/frappe.jsonl", help="append one JSON line per run")
    p.add_argument("--rankmixer-set", action="append", default=[], metavar="FIELD=VALUE",
                   help="RankMixerConfig override for RankMixer, e.g. pooling=flatten (repeatable)")
    p.add_argument("--rankmixer-lr", type=float, default=LR,
                   help=f"Adam lr for RankMixer only (default {LR:g} = BARS; anything else is "
                        "a labelled departure, recorded in the row)")
    p.add_argument("--rankmixer-over", type=int, nargs="+", default=None, metavar="SIZE",
                   help="RankMixer OverArch hidden sizes (default 256)")
    args = p.parse_args()
    if args.rankmixer_lr <= 0:
        p.error(f"--rankmixer-lr ({args.rankmixer_lr}) must be > 0")
    if args.rankmixer_over is not None and min(args.rankmixer_over) < 1:
        p.error(f"--rankmixer-over ({args.rankmixer_over}) must hold positive sizes")
    overrides: Dict[str, object] = {}
    for item in args.rankmixer_set:
        if "=" not in item:
            p.error(f"--rankmixer-set {item!r} must be FIELD=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    torch.set_num_threads(args.threads)
    data = load_frappe(args.data)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for seed in args.seeds:
        for name in args.models:
            is_rm = name == "rankmixer"
            row = run(data, name, args.variant if is_rm else "full", seed, args.max_epochs,
                      overrides=overrides if is_rm else None,
                      lr=args.rankmixer_lr if is_rm else LR,
                      rankmixer_over=args.rankmixer_over if is_rm else None,
                      protocol=args.protocol)
            if is_rm and overrides:
                row["rankmixer_overrides"] = overrides
            if is_rm and args.rankmixer_lr != LR:
                row["lr"] = args.rankmixer_lr
            if is_rm and args.rankmixer_over is not None:
                row["rankmixer_over"] = args.rankmixer_over
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
