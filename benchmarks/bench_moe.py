"""Sparse-MoE inference throughput: sparse execution vs all experts vs a FLOP-matched dense FFN.

One PerTokenSparseMoE layer in eval mode under ``torch.inference_mode``. Its h_infer
router's bias is shifted so that a calibration batch activates the wanted fraction of
experts (the measured ratio on the timed batch is printed). Variants, timed
interleaved in one process (round-robin, median of the rounds):

- ``sparse``: only active (sample, token, expert) triples (``moe_experts_sparse``);
- ``all``: every expert with the same gates (``moe_experts_dense``);
- ``ffn``: a dense PerTokenFFN whose hidden width equals the active experts' total
  (``ratio * E * h``), i.e. the same active FLOPs.

Usage (numbers in docs/benchmarks.md, "## Sparse-MoE")::

    python benchmarks/bench_moe.py --batch-sizes 64 512 --ratios 0.5 0.25 0.125
"""

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from torchrec_rankmixer.modules.moe import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN


def calibrated_moe(T: int, D: int, E: int, h: int, ratio: float, kernel: str) -> PerTokenSparseMoE:
    """A MoE whose h_infer activates about ``ratio`` of the experts on N(0, 1) tokens."""
    torch.manual_seed(0)
    moe = PerTokenSparseMoE(T, D, num_experts=E, expert_hidden=h, router="relu").eval()
    with torch.no_grad():
        logits = moe.router_infer(torch.randn(4096, T, D))  # (N, T, E)
        shift = torch.quantile(logits.reshape(-1, T * E), 1.0 - ratio, dim=0).view(T, E)
        moe.router_infer.bias.sub_(shift)  # each expert fires on ~ratio of the rows
    moe.configure_inference(execution="sparse", sparse_kernel=kernel)
    return moe


def time_interleaved(fns: Dict[str, Callable[[], object]], rounds: int, inner: int) -> Dict[str, float]:
    """Median seconds per call of each fn, measured round-robin."""
    for fn in fns.values():
        fn()  # warm-up
    samples: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="expert hidden width h")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 512])
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.25, 0.125])
    p.add_argument("--kernel", default="auto", help="sparse kernel (auto, reference, batched, grouped_mm)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    T, D, E, h = args.tokens, args.d_model, args.experts, args.hidden
    print(f"T={T} D={D} E={E} h={h} kernel={args.kernel} threads={torch.get_num_threads()} torch={torch.__version__}")
    print("| B | target | measured ratio | sparse ms | all-experts ms | FLOP-matched FFN ms "
          "| sparse speed-up vs all | sparse / FFN time |")
    print("|---|---|---|---|---|---|---|---|")
    for B in args.batch_sizes:
        x = torch.randn(B, T, D)
        for ratio in args.ratios:
            moe = calibrated_moe(T, D, E, h, ratio, args.kernel)
            dense = calibrated_moe(T, D, E, h, ratio, args.kernel).configure_inference(execution="dense")
            hidden = round(ratio * E * h)
            if hidden % D:
                raise ValueError(f"ratio*E*h ({hidden}) must be a multiple of d_model ({D}) for the FFN")
            ffn = PerTokenFFN(T, D, ffn_mult=hidden // D, kernel="batched").eval()
            with torch.inference_mode():
                measured = float((torch.relu(moe.router_infer(x)) > 0).float().mean())
                t = time_interleaved(
                    {"sparse": lambda: moe(x), "all": lambda: dense(x), "ffn": lambda: ffn(x)},
                    args.rounds, args.inner,
                )
            print(f"| {B} | {ratio:g} | {measured:.3f} | {t['sparse'] * 1e3:.2f} | {t['all'] * 1e3:.2f} "
                  f"| {t['ffn'] * 1e3:.2f} | {t['all'] / t['sparse']:.2f}x | {t['sparse'] / t['ffn']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
