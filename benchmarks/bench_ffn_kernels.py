"""PerTokenFFN kernels vs the reference loop vs the single-GEMM upper bound.

The upper bound is one shared FFN on all B*T rows: ``addmm([B*T, D], [D, kD])``, GELU,
``addmm([B*T, kD], [kD, D])`` -- the same FLOPs as T per-token FFNs, in two big GEMMs.
Every kernel's time is reported as ``bound_time / kernel_time`` (1.0 = as fast as the
bound). Candidates are timed interleaved, round by round, in one process.

The bound reads one [D, kD] + [kD, D] weight pair; T per-token FFNs must read T of them.
At small B that traffic, not the FLOPs, sets the floor, so the script also times
``stream``: reading the T weight sets once (forward) or twice plus writing their
gradients (forward+backward), with no arithmetic to speak of. ``roofline =
max(bound, stream)`` is the fastest any per-token kernel can be; ``auto / roofline``
is reported beside the fraction of the single-GEMM bound.

Usage::

    python benchmarks/bench_ffn_kernels.py                      # T=16 D=128 k=4, both dtypes
    python benchmarks/bench_ffn_kernels.py --batches 1 64 --dtypes fp32 --json out.json

bf16 note: on this VM the CPU advertises AMX but executing AMX tiles raises SIGILL, so
bf16 GEMMs crash unless oneDNN is capped below AMX; the script sets
``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` when it is unset (docs/benchmarks.md).
"""

import argparse
import json
import os
import sys
from typing import Callable, Dict, List

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import interleaved, machine_line  # noqa: E402
from torchrec_rankmixer.ops.kernels import KERNELS  # noqa: E402
from torchrec_rankmixer.ops.per_token_ffn import choose_kernel, per_token_ffn  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def single_gemm_bound(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """One shared FFN over [B*T, D] rows: the FLOP-equal upper bound. w1 [D, kD], w2 [kD, D]."""
    B, T, D = x.shape
    h = F.gelu(torch.addmm(b1, x.reshape(B * T, D), w1))  # (B*T, kD)
    return torch.addmm(b2, h, w2).reshape(B, T, D)


def make_case(B: int, T: int, D: int, k: int, dtype: torch.dtype, grad: bool) -> Dict[str, Callable[[], object]]:
    """Closures running each kernel (and the bound) forward, or forward+backward."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=g).to(dtype).requires_grad_(grad)
    pt = [torch.randn(*s, generator=g).mul(0.05).to(dtype).requires_grad_(grad)
          for s in ((T, D, k * D), (T, k * D), (T, k * D, D), (T, D))]
    sh = [torch.randn(*s, generator=g).mul(0.05).to(dtype).requires_grad_(grad)
          for s in ((D, k * D), (k * D,), (k * D, D), (D,))]
    dy = torch.randn(B, T, D, generator=g).to(dtype)

    def runner(fn: Callable[..., torch.Tensor], params: List[torch.Tensor]) -> Callable[[], object]:
        if not grad:
            def fwd() -> object:
                with torch.no_grad():
                    return fn(x, *params)
            return fwd

        def fwd_bwd() -> object:
            return torch.autograd.grad(fn(x, *params), [x, *params], dy)
        return fwd_bwd

    weights = [w.detach() for w in pt]

    def stream() -> object:
        """Minimal memory traffic of a per-token kernel: every weight read (and grad written)."""
        with torch.no_grad():
            out = [w.sum() for w in weights]
            if grad:
                out += [w.sum() for w in weights] + [w.clone() for w in weights]
            return out

    fns: Dict[str, Callable[[], object]] = {"bound": runner(single_gemm_bound, sh), "stream": stream}
    for kernel in KERNELS:
        fns[kernel] = runner(lambda *a, _k=kernel: per_token_ffn(*a, kernel=_k), pt)
    return fns


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64, 512, 4096])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--ffn-mult", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.2)
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    T, D, k = args.tokens, args.d_model, args.ffn_mult
    print(f"# machine: {machine_line()}; T={T} D={D} k={k}", flush=True)
    rows = []
    header = ("| dtype | mode | B | bound ms | stream ms | " + " | ".join(f"{n} (frac)" for n in KERNELS)
              + " | auto picks | auto/loop speed | auto / roofline |")
    print(header + "\n|" + "---|" * (header.count("|") - 1), flush=True)
    for dtype_name in args.dtypes:
        for mode in args.modes:
            grad = mode == "fwd+bwd"
            for B in args.batches:
                fns = make_case(B, T, D, k, DTYPES[dtype_name], grad)
                times = interleaved(fns, rounds=args.rounds, min_time=args.min_time)
                probe = torch.empty(B, T, D, dtype=DTYPES[dtype_name], requires_grad=grad)
                with torch.set_grad_enabled(grad):
                    picked = choose_kernel(probe, "auto")
                frac = {n: times["bound"] / times[n] for n in KERNELS}
                roofline = max(times["bound"], times["stream"])
                rows.append({"dtype": dtype_name, "mode": mode, "B": B, "T": T, "D": D, "k": k,
                             "ms": {n: 1e3 * t for n, t in times.items()}, "frac_of_bound": frac,
                             "auto_frac_of_roofline": roofline / times["auto"], "auto_picks": picked})
                cells = " | ".join(f"{1e3 * times[n]:.3f} ({frac[n]:.2f})" for n in KERNELS)
                print(f"| {dtype_name} | {mode} | {B} | {1e3 * times['bound']:.3f} | "
                      f"{1e3 * times['stream']:.3f} | {cells} | {picked} | "
                      f"{times['reference'] / times['auto']:.2f}x | {roofline / times['auto']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
