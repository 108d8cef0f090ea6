"""The GPU run of the dense core: parity, training MFU, FFN kernels, Sparse-MoE -> JSON.

Sections (each writes ``OUT_DIR/<section>.json``; ``summary.json`` lists them all):

- ``parity``: every op, block and kernel of the dense core on the device against CPU
  fp32, forward and backward; fp32 (TF32 off) tight, bf16 within tolerance
  (benchmarks/gpu/parity.py).
- ``train_mfu``: the paper's 100M and 1B presets, one bf16-autocast AdamW training step,
  eager and ``torch.compile``d, as samples/s and MFU against ``--peak-tflops``.
- ``ffn_kernels``: per-token FFN kernels (reference loop, batched, grouped_mm), bf16,
  forward and forward+backward, B = 1k .. 16k.
- ``moe``: a Sparse-MoE layer in eval mode, sparse execution (batched and grouped_mm
  kernels) vs every expert, at 1/2, 1/4 and 1/8 of the experts active.

It imports torch and the package's dense core only: an import finder refuses TorchRec
and fbgemm_gpu before anything else loads, and ``summary.json`` records that neither
was imported. Sections stop being started once ``--budget-s`` has passed (recorded as
skipped). Exit status 0 when every section ran and every parity check passed, else 1.

Usage::

    bash benchmarks/gpu/run.sh OUT_DIR                      # CUDA, the full sizes
    bash benchmarks/gpu/run.sh OUT_DIR --device cpu --tiny  # the same code, tiny sizes
"""

import argparse
import json
import os
import platform
import sys
import time
import traceback
from typing import Any, Dict, List, Optional

REFUSED = ("torchrec", "fbgemm_gpu")


class _RefuseImports:
    """A meta-path finder that makes importing TorchRec or fbgemm_gpu fail."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"the GPU run must not import {name} (the dense core needs torch only)")


sys.meta_path.insert(0, _RefuseImports())
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from benchmarks.gpu import parity, perf  # noqa: E402

SECTIONS = ("parity", "train_mfu", "ffn_kernels", "moe")
H200_BF16_DENSE_TFLOPS = 989.0


def _section(name: str, device: torch.device, sizes: perf.Sizes, peak: float) -> Dict[str, Any]:
    if name == "parity":
        return parity.run(device, *sizes.parity)
    return {"train_mfu": perf.train_mfu, "ffn_kernels": perf.ffn_kernels, "moe": perf.moe}[name](
        device, sizes, peak)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke run, e.g. on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"dense bf16 peak for MFU (default: {H200_BF16_DENSE_TFLOPS:g}, an H200's, on "
                   "CUDA; a same-run bf16 GEMM on CPU)")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; use --device cpu --tiny for the smoke run", file=sys.stderr)
        return 2
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error(f"--peak-tflops ({args.peak_tflops}) must be > 0")
    os.makedirs(args.out_dir, exist_ok=True)
    device = torch.device(args.device)
    sizes = perf.Sizes.tiny() if args.tiny else perf.Sizes.full()
    start = time.perf_counter()
    measured = perf.gemm_peak(device, 256 if args.tiny else 8192)
    default_peak = H200_BF16_DENSE_TFLOPS * 1e12 if device.type == "cuda" else measured
    peak = args.peak_tflops * 1e12 if args.peak_tflops else default_peak
    summary: Dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": args.tiny,
        "peak_tflops": peak / 1e12, "measured_bf16_gemm_tflops": measured / 1e12,
        "threads": torch.get_num_threads(), "sections": {},
    }
    ok = True
    for name in args.sections:
        began = time.perf_counter()
        if began - start > args.budget_s:
            result: Dict[str, Any] = {"skipped": f"time budget of {args.budget_s:g} s spent"}
        else:
            try:
                result = _section(name, device, sizes, peak)
            except Exception as e:  # noqa: BLE001 - recorded; the other sections still run
                result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        section_ok = "error" not in result and "skipped" not in result and result.get("ok", True)
        ok = ok and bool(section_ok)
        summary["sections"][name] = {"ok": bool(section_ok), "seconds": time.perf_counter() - began}
        _write(args.out_dir, name, result)
        print(f"{name}: {'ok' if section_ok else 'FAILED'} ({time.perf_counter() - began:.0f} s)", flush=True)
    summary.update(seconds=time.perf_counter() - start, ok=ok,
                   imported=sorted(m for m in REFUSED if m in sys.modules))
    _write(args.out_dir, "summary", summary)
    return 0 if ok else 1


def _write(out_dir: str, name: str, data: Dict[str, Any]) -> None:
    path = os.path.join(out_dir, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    sys.exit(main())
