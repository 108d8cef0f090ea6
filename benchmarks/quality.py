"""The quality suite: every model on every data set through ``rankmixer-train``, 3 seeds.

Each (data set, model) is one shipped config file, ``configs/<data set>/<model>.yaml``
(extending the data set's ``base.yaml``: same optimiser, budget, embeddings and
validation rule for every model), so a table row is reproduced by one command::

    rankmixer-train --config configs/frappe_x1/rankmixer.yaml --train.seed 1

This script runs those commands (``--jobs`` at a time, one thread each), reads each run's
``summary.json``, merges the per-seed results into ``docs/results/quality.json`` (one
record per data set, model and seed; a rerun replaces its record) and renders the tables
into ``docs/benchmarks.md`` between the ``quality-suite`` markers. Synthetic data sets also
get their oracle AUC (the true probabilities on the same test batches). Frappe runs only
when its files are present (../shared/data/frappe_x1); nothing read from it is written
except the metrics.

Usage::

    python -m benchmarks.quality --seeds 1 2 3                    # everything, 2 jobs
    python -m benchmarks.quality --datasets synthetic_affinity --models dnn rankmixer --seeds 1
    python -m benchmarks.quality --render-only                    # tables from the JSON
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torchrec_rankmixer.data.settings import SYNTHETIC_FORMATS  # noqa: E402
from torchrec_rankmixer.run_format import read_summary  # noqa: E402
from torchrec_rankmixer.train.config import TrainConfig, load_config  # noqa: E402
from torchrec_rankmixer.utils.files import atomic_write_text  # noqa: E402

DATASETS: Tuple[str, ...] = ("synthetic", "synthetic_affinity", "synthetic_context_rules", "frappe_x1")
# Table order; a data set runs the models it has a config file for.
MODELS: Tuple[str, ...] = ("dnn", "dlrm", "dlrm_dcn", "dcnv2", "rankmixer", "rankmixer_deep", "rankmixer_dot_cross",
                           "rankmixer_nodot", "rankmixer_preln", "rankmixer_paper", "tokenmixer_large")
REFERENCE_MODEL = "dlrm_dcn"  # the model the swap replaces: every table shows the delta to it
PUBLISHED = {"frappe_x1": {"dnn": 0.9833, "dcnv2": 0.9845}}  # BARS leaderboard, test AUC
RESULTS = os.path.join("docs", "results", "quality.json")
DOC = os.path.join("docs", "benchmarks.md")
BEGIN, END = "<!-- quality-suite:begin -->", "<!-- quality-suite:end -->"


def config_path(dataset: str, model: str) -> str:
    return os.path.join("configs", dataset, f"{model}.yaml")


def suite_models(dataset: str, wanted: Sequence[str]) -> List[str]:
    """The models of ``wanted`` that ``dataset`` has a config file for, in table order."""
    return [m for m in MODELS if m in wanted and os.path.isfile(os.path.join(ROOT, config_path(dataset, m)))]


def missing_files(cfg: TrainConfig) -> List[str]:
    """Data files a config names that are not here (Frappe without ../shared)."""
    d = cfg.data
    return [f for f in d.train_files + d.eval_files + d.test_files if not os.path.exists(os.path.join(ROOT, f))]


def oracle_auc_of(cfg: TrainConfig) -> Optional[float]:
    """AUC of the planted probabilities on the test batches of a synthetic config."""
    if cfg.data.format not in SYNTHETIC_FORMATS or not cfg.data.test_batches:
        return None
    from torchrec_rankmixer.data.sources import make_source
    from torchrec_rankmixer.data.synthetic import TEST_OFFSET
    from torchrec_rankmixer.data.synthetic_families import oracle_auc

    source = make_source(cfg.data, two_labels=False, rank=0, world_size=1)
    return oracle_auc(source.data, cfg.data.eval_batch_size, cfg.data.test_batches, start=TEST_OFFSET)


def run_name(dataset: str, model: str, seed: int) -> str:
    """The run directory's name under the work dir (and its log's stem)."""
    return f"{dataset}-{model}-s{seed}"


def run_command(dataset: str, model: str, seed: int, work_dir: str) -> List[str]:
    return [sys.executable, "-m", "torchrec_rankmixer.train", "--config", config_path(dataset, model),
            "--train.seed", str(seed), "--run.out_dir", work_dir, "--run.name", run_name(dataset, model, seed),
            "--run.overwrite", "true"]


def run_one(dataset: str, model: str, seed: int, work_dir: str) -> Dict:
    """Train one (data set, model, seed); the record for the results file (``error`` set
    when the run failed: its log's last line)."""
    cmd = run_command(dataset, model, seed, work_dir)
    name = run_name(dataset, model, seed)
    log = os.path.join(work_dir, f"{name}.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    start = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    record = {"dataset": dataset, "model": model, "seed": seed,
              "command": f"rankmixer-train --config {config_path(dataset, model)} --train.seed {seed}",
              "date": datetime.date.today().isoformat(), "machine": machine()}
    if rc != 0:
        tail = open(log).read().strip().splitlines()[-1:] or ["(no output)"]
        return {**record, "error": f"exit {rc}: {tail[0]} (log: {log})"}
    s = read_summary(os.path.join(work_dir, name))
    return {**record, "valid_auc": s["metrics"].get("ctr_auc"), "test_auc": s["test_metrics"].get("ctr_auc"),
            "test_logloss": s["test_metrics"].get("ctr_logloss"), "best_step": s["best_step"],
            "steps": s["step"], "minutes": round((time.time() - start) / 60, 2)}


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread per run"


# ------------------------------------------------------------------ results file
def load_results(path: str) -> Dict:
    if not os.path.isfile(path):
        return {"runs": [], "oracle_auc": {}}
    with open(path) as f:
        return json.load(f)


def merge_runs(old: List[Dict], new: List[Dict]) -> List[Dict]:
    """``new`` replaces records of ``old`` with the same (data set, model, seed)."""
    key = lambda r: (r["dataset"], r["model"], r["seed"])  # noqa: E731
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new if "error" not in r})
    return sorted(merged.values(), key=lambda r: (DATASETS.index(r["dataset"]) if r["dataset"] in DATASETS
                                                  else len(DATASETS), r["dataset"], r["model"], r["seed"]))


# ------------------------------------------------------------------ tables
def _mean_std(xs: List[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def render(results: Dict) -> str:
    """Markdown tables, one per data set: test AUC mean ± std over seeds (sample std), the
    per-seed values, the delta of the mean to ``REFERENCE_MODEL``, valid AUC, test
    logloss, the best step and the minutes per run."""
    runs = results["runs"]
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == dataset]
        by: Dict[str, List[Dict]] = {}
        for r in sorted(rs, key=lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else 99, r["seed"])):
            by.setdefault(r["model"], []).append(r)
        ref = by.get(REFERENCE_MODEL)
        ref_mean = statistics.mean(r["test_auc"] for r in ref) if ref else None
        head = f"**{dataset}**"
        oracle = results.get("oracle_auc", {}).get(dataset)
        if oracle is not None:
            head += f" (oracle test AUC {oracle:.4f})"
        dates = sorted({r["date"] for r in rs})
        head += f"; runs of {', '.join(dates)}; {rs[0]['machine']}."
        published = PUBLISHED.get(dataset, {})
        extra = " published |" if published else ""
        out += [head, "", f"| model | seeds | test AUC | per seed | Δ vs {REFERENCE_MODEL} | valid AUC | "
                f"test logloss | best step | min/run |{extra}",
                "|---|---|---|---|---|---|---|---|---|" + ("---|" if published else "")]
        for model, ms in by.items():
            test = [r["test_auc"] for r in ms]
            delta = f"{statistics.mean(test) - ref_mean:+.4f}" if ref_mean is not None else ""
            row = (f"| {model} | {','.join(str(r['seed']) for r in ms)} | {_mean_std(test)} | "
                   f"{' / '.join(f'{x:.4f}' for x in test)} | {delta} | {_mean_std([r['valid_auc'] for r in ms])} | "
                   f"{_mean_std([r['test_logloss'] for r in ms])} | {', '.join(str(r['best_step']) for r in ms)} | "
                   f"{statistics.mean(r['minutes'] for r in ms):.1f} |")
            if published:
                row += f" {published.get(model, '')} |"
            out.append(row)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_doc(doc: str, tables: str) -> None:
    """Replace the text between the markers of ``doc`` with ``tables`` (atomically)."""
    text = open(doc).read()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc!r} has no {BEGIN} ... {END} markers to render the quality tables between")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(doc, f"{head}{BEGIN}\n{tables}{END}{tail}")


# ------------------------------------------------------------------ main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--work-dir", default=os.path.join("runs", "quality"), help="run directories and logs")
    p.add_argument("--results", default=RESULTS, help="per-seed results (JSON), merged into")
    p.add_argument("--doc", default=DOC, help="markdown file whose quality-suite section is rendered ('': none)")
    p.add_argument("--render-only", action="store_true", help="only render the tables from --results")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    results = load_results(args.results)
    failed: List[Dict] = []
    if not args.render_only:
        jobs = []
        for dataset in args.datasets:
            models = suite_models(dataset, args.models)
            if not models:
                continue
            cfg = load_config(config_path(dataset, models[0]))
            missing = missing_files(cfg)
            if missing:
                print(f"skipping {dataset}: {missing[0]} is not here", file=sys.stderr)
                continue
            oracle = oracle_auc_of(cfg)
            if oracle is not None:
                results.setdefault("oracle_auc", {})[dataset] = round(oracle, 6)
            jobs += [(dataset, m, s) for s in args.seeds for m in models]
        if args.dry_run:
            for job in jobs:
                print(" ".join(run_command(*job, args.work_dir)[2:]))
            return 0
        os.makedirs(args.work_dir, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            new = list(pool.map(lambda j: run_one(*j, args.work_dir), jobs))
        failed = [r for r in new if "error" in r]
        for r in failed:
            print(f"FAILED {r['dataset']} {r['model']} seed {r['seed']}: {r['error']}", file=sys.stderr)
        results["runs"] = merge_runs(results.get("runs", []), new)
        os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
        atomic_write_text(args.results, json.dumps(results, indent=1) + "\n")
    if results["runs"]:
        tables = render(results)
        if args.doc:
            write_doc(args.doc, tables)
        print(tables)
    return 1 if not args.render_only and failed else 0


if __name__ == "__main__":
    sys.exit(main())
