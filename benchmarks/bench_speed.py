"""All speed tables of docs/benchmarks.md in one command.

Runs, one after another, each in its own process: the PerTokenFFN kernel table
(``bench_ffn_kernels.py``), the over-arch comparison (``bench_overarch.py``), the
sharded end-to-end comparison (``bench_e2e.py``) and the compiled dense path
(``bench_compile.py``), writing JSON under ``--out-dir``.

Usage::

    python benchmarks/bench_speed.py --out-dir results
    python benchmarks/bench_speed.py --quick      # small sizes, to check it runs
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def commands(out_dir: str, quick: bool) -> list:
    py = sys.executable
    ffn = [py, f"{HERE}/bench_ffn_kernels.py", "--json", f"{out_dir}/ffn_kernels.json"]
    over = [py, f"{HERE}/bench_overarch.py", "--json", f"{out_dir}/overarch.json"]
    e2e = [py, f"{HERE}/bench_e2e.py", "--json", f"{out_dir}/e2e.json"]
    compiled = [py, f"{HERE}/bench_compile.py", "--json", f"{out_dir}/compile.json"]
    if quick:
        ffn += ["--batches", "1", "64", "--rounds", "1", "--min-time", "0.01", "--d-model", "32"]
        over += ["--batch", "64", "--rounds", "1", "--peak-n", "256"]
        e2e += ["--world-sizes", "1", "--steps", "2", "--warmup", "1", "--batch", "64", "--rows", "1000"]
        compiled += ["--rounds", "1", "--window", "2", "--warmup", "2", "--set", "data.batch_size=32"]
    else:
        ffn += ["--rounds", "3", "--min-time", "0.2"]
        over += ["--batch", "512", "--rounds", "3", "--peak-n", "1024", "--tokens", "8", "4", "--compile", "--profile"]
        e2e += ["--world-sizes", "1", "2", "--steps", "10", "--warmup", "2", "--batch", "512"]
        compiled += ["--rounds", "4", "--window", "30"]
    return [ffn, over, e2e, compiled]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", default="results")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for cmd in commands(args.out_dir, args.quick):
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
