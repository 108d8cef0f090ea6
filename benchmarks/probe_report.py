"""Aggregate quality-probe JSON lines: mean ± spread (max - min over seeds / 2) per data set
and model, valid and test AUC, as a Markdown table.

Usage::

    python benchmarks/probe_report.py results/probe.jsonl [more.jsonl ...] [--metric test_auc]
"""

import argparse
import json
from collections import defaultdict
from typing import Dict, List, Tuple


def load(paths: List[str]) -> Dict[Tuple[str, str], Dict[int, dict]]:
    """(dataset, model) -> seed -> row; a later row for the same seed replaces an earlier one."""
    rows: Dict[Tuple[str, str], Dict[int, dict]] = defaultdict(dict)
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                rows[(r["dataset"], r["model"])][r.get("seed", 0)] = r
    return rows


def fmt(values: List[float]) -> str:
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.4f} ± {half:.4f}" if len(values) > 1 else f"{mean:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="only these seeds")
    p.add_argument("--delta-vs", default=None, metavar="MODEL",
                   help="print test AUC minus MODEL's (mean over the seeds both have) instead")
    args = p.parse_args()
    rows = load(args.paths)
    datasets = sorted({d for d, _ in rows})
    models = list(dict.fromkeys(m for _, m in rows))
    if args.delta_vs:
        print("| model | " + " | ".join(f"{d} test | Δ vs {args.delta_vs}" for d in datasets) + " |")
        print("|---|" + "---|---|" * len(datasets))
        for m in models:
            cells = []
            for d in datasets:
                mine, ref = rows.get((d, m), {}), rows.get((d, args.delta_vs), {})
                seeds = [s for s in mine if s in ref and (args.seeds is None or s in args.seeds)]
                if not seeds:
                    cells += ["", ""]
                    continue
                t = [mine[s]["test_auc"] for s in seeds]
                delta = sum(mine[s]["test_auc"] - ref[s]["test_auc"] for s in seeds) / len(seeds)
                cells += [fmt(t), f"{delta:+.4f}"]
            print(f"| {m} | " + " | ".join(cells) + " |")
        return
    print("| model | " + " | ".join(f"{d} valid | {d} test" for d in datasets) + " |")
    print("|---|" + "---|---|" * len(datasets))
    for m in models:
        cells = []
        for d in datasets:
            seeds = {s: r for s, r in rows.get((d, m), {}).items() if args.seeds is None or s in args.seeds or m == "oracle"}
            if not seeds:
                cells += ["", ""]
                continue
            n = f" (n={len(seeds)})" if len(seeds) > 1 else ""
            cells += [fmt([r["valid_auc"] for r in seeds.values()]), fmt([r["test_auc"] for r in seeds.values()]) + n]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
