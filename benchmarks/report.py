"""Tables and the scaling plot from the JSON-lines results of the quality benchmarks.

Usage::

    python benchmarks/report.py --ablations results/syn_ablations.jsonl \
        --scaling results/syn_scaling.jsonl --plot docs/img/scaling_synthetic.png
    python benchmarks/report.py --frappe results/frappe_main.jsonl
"""

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.variants import PAPER_DELTA_PCT, VARIANTS  # noqa: E402


def read(*paths: str) -> List[Dict]:
    """JSON lines from one or more files; a run repeated with the same (model, tag/variant,
    seed, Frappe stopping protocol) counts once, the last one read wins (runs are deterministic, so a repeat is the
    same number, not a new sample)."""
    rows: Dict[tuple, Dict] = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[(r["model"], r.get("tag", r.get("variant")), r["seed"], r.get("protocol"))] = r
    return list(rows.values())


def mean_std(xs: List[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


# Published test AUCs on Frappe_x1 (BARS leaderboard); FinalMLP is the leaderboard's best.
FRAPPE_PUBLISHED = {"dnn": 0.9833, "dcnv2": 0.9845}


def frappe_table(rows: List[Dict]) -> None:
    """Per model and stopping protocol (rows without one ran the earlier ``v0`` rule):
    seeds, dense params, best epochs, valid/test AUC and test logloss as mean ± std over
    seeds, and the published test AUC."""
    by = defaultdict(list)
    for r in rows:
        by[(r["model"], r["variant"], r.get("protocol", "v0"))].append(r)
    print("| model | seeds | protocol | dense params | best epoch (per seed) | valid AUC | test AUC | "
          "test logloss | published test AUC |\n|---|---|---|---|---|---|---|---|---|")
    for (model, variant, protocol), rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        print(f"| {model}{'' if variant == 'full' else '/' + variant} | "
              f"{','.join(str(r['seed']) for r in rs)} | {protocol} | {rs[0]['dense_params']:,} | "
              f"{', '.join(str(r['best_epoch']) for r in rs)} | {mean_std([r['valid_auc'] for r in rs])} | "
              f"{mean_std([r['test_auc'] for r in rs])} | {mean_std([r['test_logloss'] for r in rs])} | "
              f"{FRAPPE_PUBLISHED.get(model, '')} |")


def ablation_table(rows: List[Dict], key: str = "auc") -> None:
    """Per variant: mean AUC and the AUC change vs the full model, paired by seed (a
    variant's delta uses only seeds where the full model ran too)."""
    by: Dict[str, Dict[int, Dict]] = defaultdict(dict)
    for r in rows:
        by[r.get("tag", r.get("variant"))][r["seed"]] = r
    if "full" not in by:
        print("(no 'full' run yet)")
        return
    full = by["full"]
    flops0 = next(iter(full.values())).get("encoder_flops")
    print("| variant | seeds | AUC | ΔAUC vs full (ours) | ΔAUC (paper) | direction agrees | "
          "encoder FLOPs vs full | dense params |")
    print("|---|---|---|---|---|---|---|---|")
    for tag in VARIANTS:
        if tag not in by:
            continue
        runs = by[tag]
        seeds = sorted(s for s in runs if s in full)
        deltas = [100 * (runs[s][key] - full[s][key]) / full[s][key] for s in seeds]
        delta = statistics.mean(deltas)
        paper = PAPER_DELTA_PCT.get(tag)
        agrees = "" if paper is None else ("yes" if delta < 0 else "no")
        meta = next(iter(runs.values()))
        fl = meta.get("encoder_flops")
        flops = f"{100 * (fl - flops0) / flops0:+.1f}%" if fl and flops0 else ""
        spread = f" (per seed {', '.join(f'{d:+.2f}' for d in deltas)})" if len(deltas) > 1 else ""
        print(f"| {tag} | {','.join(map(str, seeds))} | {mean_std([runs[s][key] for s in seeds])} | "
              f"{delta:+.2f}%{spread} | {'' if paper is None else f'{paper:+.2f}%'} | {agrees} | "
              f"{flops} | {meta['dense_params']:,} |")


def scaling(rows: List[Dict], plot: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| model | size | dense params | AUC |\n|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for model in ("rankmixer", "dcnv2"):
        pts = defaultdict(list)
        for r in rows:
            if r["model"] == model:
                pts[r["dense_params"]].append((r["auc"], r["tag"]))
        xs = sorted(pts)
        ys = [statistics.mean(a for a, _ in pts[x]) for x in xs]
        for x, y in zip(xs, ys):
            print(f"| {model} | {pts[x][0][1]} | {x:,} | {y:.4f} |")
        ax.plot(xs, ys, marker="o", label={"rankmixer": "RankMixer", "dcnv2": "DCNv2 (DLRM_DCN)"}[model])
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    steps = {r.get("steps") for r in rows}
    ax.set_title(f"synthetic click data, {'/'.join(map(str, sorted(steps)))} Adam steps", fontsize=9)
    ax.set_xlabel("dense parameters")
    ax.set_ylabel("held-out AUC (synthetic)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(plot) or ".", exist_ok=True)
    fig.savefig(plot, dpi=120)
    print(f"plot: {plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frappe", nargs="+", default=None, metavar="FILE",
                   help="benchmarks/frappe.py outputs (several files are merged)")
    p.add_argument("--ablations", default=None)
    p.add_argument("--scaling", default=None)
    p.add_argument("--plot", default="docs/img/scaling_synthetic.png")
    args = p.parse_args()
    if args.frappe:
        rows = read(*args.frappe)
        frappe_table([r for r in rows if r["variant"] == "full"])
        if any(r["variant"] != "full" for r in rows):
            ablation_table([r for r in rows if r["model"] == "rankmixer"], key="test_auc")
    if args.ablations:
        ablation_table(read(args.ablations))
    if args.scaling:
        scaling(read(args.scaling), args.plot)


if __name__ == "__main__":
    main()
