"""Quantized inference: parity (AUC, logit error), model size and CPU latency.

Trains a DLRM_RankMixer briefly on synthetic data, exports it with several table /
dense dtypes, reloads every artifact and measures, side by side in one run:

- held-out AUC and max |logit - float logit| per variant,
- table / model / artifact-file bytes,
- p50 / p99 latency and throughput at batch 1, 64, 512 (calls interleaved round-robin
  across variants so background load hits all of them alike), and the two ratios the
  default artifact is held to: its p50 against the eager float model's and against the
  int8 ``.pt2``'s (the default before the split artifact).

Usage::

    python benchmarks/bench_inference.py            # full run (minutes on 2 cores)
    python benchmarks/bench_inference.py --quick    # smoke run
    python benchmarks/bench_inference.py --model default   # DLRM_RankMixer's default encoder

bf16 on this dev box: the CPU advertises AMX but executing it faults (SIGILL), so the
script caps oneDNN at AVX512-BF16 (ONEDNN_MAX_CPU_ISA) before torch loads.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import torch  # noqa: E402
from torchrec import EmbeddingBagCollection  # noqa: E402

from torchrec_rankmixer.config import RankMixerConfig  # noqa: E402
from torchrec_rankmixer.data.synthetic import SyntheticClickData  # noqa: E402
from torchrec_rankmixer.inference import (  # noqa: E402
    QuantizationOptions,
    export_model,
    load_artifact,
)
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer  # noqa: E402
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET  # noqa: E402
from torchrec_rankmixer.train.simple import train_simple  # noqa: E402
from torchrec_rankmixer.utils.metrics import binary_auc  # noqa: E402
from benchmarks.common import machine_line  # noqa: E402

Q = QuantizationOptions
VARIANTS: Dict[str, Tuple[QuantizationOptions, str]] = {  # name -> (options, artifact)
    "float": (Q(table_dtype="fp32", dynamic_int8_linear=False), "export"),
    "int8 (aoti, default)": (Q(table_dtype="int8"), "auto"),  # int8 tables and int8 dense
    "int8 (aoti, float dense)": (Q(table_dtype="int8", dynamic_int8_linear=False), "auto"),
    "int8": (Q(table_dtype="int8", dynamic_int8_linear=False), "export"),  # the .pt2 of before
    "int4": (Q(table_dtype="int4", dynamic_int8_linear=False), "export"),
    "fp16": (Q(table_dtype="fp16", dynamic_int8_linear=False), "export"),
    "int8+fp16": (Q(table_dtype="int8", dense_dtype="fp16"), "export"),
    "int8+bf16": (Q(table_dtype="int8", dense_dtype="bf16"), "export"),
    "int8 (ts)": (Q(table_dtype="int8", dynamic_int8_linear=False), "torchscript"),
    "int8+dyn-int8 (ts)": (Q(table_dtype="int8"), "torchscript"),
}
LATENCY_VARIANTS = ("float", "float-eager", "int8 (aoti, default)", "int8 (aoti, float dense)", "int8",
                    "int4", "int8+bf16", "int8 (ts)", "int8+dyn-int8 (ts)")


def artifact_args(batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kjt = batch.sparse_features
    return kjt_args(batch.dense_features, kjt)


def kjt_args(dense, kjt) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return dense, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), -1).int()


def percentile(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per table")
    parser.add_argument("--dim", type=int, default=64, help="embedding dim")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--model", choices=("paper", "default"), default="paper",
                        help="paper: the paper's RankMixer block, no interaction (the model the documented "
                             "numbers timed); default: what DLRM_RankMixer builds without a config")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.steps = 2000, 40
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    data = SyntheticClickData(num_sparse_features=8, num_embeddings=args.rows, seed=0)
    model = DLRM_RankMixer(
        EmbeddingBagCollection(tables=data.table_configs(args.dim)),
        dense_in_features=data.dense_in_features,
        dense_arch_layer_sizes=[64, 64],
        over_arch_layer_sizes=[64, 1],
        **({"rankmixer_config": RankMixerConfig(d_model=64, num_tokens=8, num_layers=2), "interaction": "none"}
           if args.model == "paper" else {}),
    )
    t0 = time.perf_counter()
    train_simple(model, data.batches(512, args.steps), lr=3e-3, log_every=10**9)
    train_s = time.perf_counter() - t0
    model.eval()

    n_eval = 4 if args.quick else 20
    eval_batches = list(data.batches(1024, n_eval, start=EVAL_OFFSET))
    labels = torch.cat([b.labels for b in eval_batches])
    results: Dict[str, Dict[str, object]] = {}
    modules = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ref = torch.cat([model(b.dense_features, b.sparse_features)[:, 0] for b in eval_batches])
        for i, (name, (options, artifact)) in enumerate(VARIANTS.items()):
            out_dir = os.path.join(tmp, str(i))
            exp = export_model(model, out_dir, options, artifact=artifact)
            loaded = load_artifact(exp.path)
            logits = torch.cat([loaded.module(*artifact_args(b))[:, 0] for b in eval_batches])
            sizes = exp.metadata["sizes_bytes"]
            results[name] = {
                "artifact": exp.metadata["artifact"],
                "auc": binary_auc(logits, labels),
                "max_abs_logit_diff": (logits - ref).abs().max().item(),
                "mean_abs_logit_diff": (logits - ref).abs().mean().item(),
                "table_bytes": sizes["tables"],
                "model_bytes": sizes["model"],
                "file_bytes": sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)
                                  if f.startswith("model")),  # both files of the split artifact
            }
            modules[name] = loaded.module
            if name == "float":  # the same float model, eager (not exported)
                modules["float-eager"] = exp.module
        results["_float_eager"] = {"auc": binary_auc(ref, labels)}

        latency: Dict[str, Dict[str, Dict[str, float]]] = {}
        for batch_size in (1, 64, 512):
            calls = {1: 300, 64: 150, 512: 40}[batch_size] // (10 if args.quick else 1)
            inputs = [artifact_args(data.batch(batch_size, EVAL_OFFSET + 100 + i)) for i in range(8)]
            times: Dict[str, List[float]] = {n: [] for n in LATENCY_VARIANTS}
            for n in LATENCY_VARIANTS:  # warm-up
                for x in inputs[:3]:
                    modules[n](*x)
            for i in range(calls):
                x = inputs[i % len(inputs)]
                for n in LATENCY_VARIANTS:  # interleaved: same moment, every variant
                    t = time.perf_counter()
                    modules[n](*x)
                    times[n].append(time.perf_counter() - t)
            latency[str(batch_size)] = {
                n: {
                    "p50_ms": 1e3 * percentile(ts, 50),
                    "p99_ms": 1e3 * percentile(ts, 99),
                    "samples_per_s": batch_size * len(ts) / sum(ts),
                }
                for n, ts in times.items()
            }
    report = {
        "config": {"model": args.model, "encoder": {k: getattr(model.encoder.config, k) for k in
                                                    ("block", "num_tokens", "d_model", "num_layers", "ffn_mult")}, "interaction": model.interaction,
                   "rows_per_table": args.rows, "tables": 8, "dim": args.dim,
                   "train_steps": args.steps, "train_s": round(train_s, 1),
                   "threads": args.threads, "torch": torch.__version__, "machine": machine_line()},
        "parity": results,
        "latency": latency,
        "default_speedup": default_ratios(latency),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print_markdown(report)


def default_ratios(latency: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per batch: the default artifact's p50 speed-up over float-eager and over the int8 .pt2."""
    out = {}
    for batch, per in latency.items():
        p50 = per["int8 (aoti, default)"]["p50_ms"]
        out[batch] = {"vs_float_eager": per["float-eager"]["p50_ms"] / p50, "vs_int8_pt2": per["int8"]["p50_ms"] / p50}
    return out


def print_markdown(report: Dict[str, object]) -> None:
    parity = report["parity"]  # type: ignore[index]
    base = parity["float"]
    print(f"config: {json.dumps(report['config'])}")
    print(f"float eager AUC: {parity['_float_eager']['auc']:.5f}\n")
    print("| variant | artifact | AUC | AUC - float | max / mean abs logit diff | table bytes | "
          "tables x smaller | model bytes | file bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in parity.items():
        if name.startswith("_"):
            continue
        print(f"| {name} | {r['artifact']} | {r['auc']:.5f} | {r['auc'] - base['auc']:+.5f} | "
              f"{r['max_abs_logit_diff']:.2e} / {r['mean_abs_logit_diff']:.2e} | {r['table_bytes']:,} | "
              f"{base['table_bytes'] / r['table_bytes']:.2f} | {r['model_bytes']:,} | "
              f"{r['file_bytes']:,} |")
    print("\n| batch | variant | p50 ms | p99 ms | samples/s | speed-up vs float (p50) |")
    print("|---|---|---|---|---|---|")
    for batch, per in report["latency"].items():  # type: ignore[union-attr]
        for name, r in per.items():
            speed = per["float"]["p50_ms"] / r["p50_ms"]
            print(f"| {batch} | {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                  f"{r['samples_per_s']:,.0f} | {speed:.2f}x |")
    for batch, r in report["default_speedup"].items():  # type: ignore[union-attr]
        print(f"batch {batch}: default artifact p50 {r['vs_float_eager']:.2f}x float-eager, "
              f"{r['vs_int8_pt2']:.2f}x the int8 .pt2")


if __name__ == "__main__":
    main()
