"""benchmarks/gpu/run.sh end to end on CPU with tiny sizes: every section runs, every
parity check passes, and neither TorchRec nor fbgemm_gpu is imported (they are refused)."""

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_run_passes_on_cpu_with_tiny_sizes(tmp_path) -> None:
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu", "run.sh"), str(tmp_path), "--device", "cpu", "--tiny"],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    read = lambda name: json.load(open(tmp_path / f"{name}.json"))  # noqa: E731
    summary = read("summary")
    assert summary["ok"] and summary["imported"] == []
    assert list(summary["sections"]) == ["parity", "train_mfu", "ffn_kernels", "moe"]
    checks = read("parity")["checks"]
    assert all(c["ok"] for c in checks)
    for kernel in ("reference", "batched", "grouped_mm"):  # each kernel, fp32 and bf16, with backward
        names = {(c["check"], c["dtype"]) for c in checks if c["check"].endswith(f"[{kernel}]")}
        assert {n for n, _ in names} >= {f"per_token_ffn[{kernel}]", f"sparse_moe_train[{kernel}]"}
        assert {d for _, d in names} == {"float32", "bfloat16"}
    mfu = read("train_mfu")
    assert sorted(mfu) == ["100M/compiled", "100M/eager", "1B/compiled", "1B/eager"]
    assert all(r["mfu"] > 0 and r["samples_per_s"] > 0 for r in mfu.values())
    cells = read("ffn_kernels")["cells"]
    assert len(cells) == 2 * 2 * 3 and all("ms" in c for c in cells)  # batches x modes x kernels
    rows = read("moe")["rows"]
    assert [r["target"] for r in rows] == [0.5, 0.25, 0.125]
    assert all(0 < r["measured_ratio"] < 1 and r["speedup_batched"] > 0 for r in rows)


def test_gpu_run_refuses_a_missing_gpu_or_bad_flags(tmp_path) -> None:
    run = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "run.py"), str(tmp_path)]
    proc = subprocess.run(run + ["--device", "cpu", "--peak-tflops", "0"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--peak-tflops (0.0) must be > 0" in proc.stderr
    if not torch.cuda.is_available():
        proc = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "run.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
