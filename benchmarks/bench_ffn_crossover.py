"""Where the loop overtakes bmm: fp32 forward without autograd, B in {1024, 2048, 4096}.

Backs ``CPU_FP32_INFERENCE_LOOP_MIN_BATCH`` in ops/per_token_ffn.py. Also times a
``[T, B, D]``-contiguous bmm variant, which did not help.

Usage::

    python benchmarks/bench_ffn_crossover.py
"""

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_ffn_kernels import single_gemm_bound  # noqa: E402
from benchmarks.common import interleaved  # noqa: E402
from torchrec_rankmixer.ops.per_token_ffn import per_token_ffn_batched, per_token_ffn_reference  # noqa: E402


def bmm_contig(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """bmm on a contiguous [T, B, D] copy of x (candidate; not faster)."""
    xt = x.transpose(0, 1).contiguous()  # (T, B, D)
    h = F.gelu(torch.baddbmm(b1.unsqueeze(1), xt, w1))  # (T, B, kD)
    return torch.baddbmm(b2.unsqueeze(1), h, w2).transpose(0, 1)  # (B, T, D)


def main() -> None:
    kernels = {"reference": per_token_ffn_reference, "batched": per_token_ffn_batched, "bmm_contig": bmm_contig}
    T, D, k = 16, 128, 4
    for B in (1024, 2048, 4096):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, T, D, generator=g)
        pt = [torch.randn(*s, generator=g).mul(0.05) for s in ((T, D, k * D), (T, k * D), (T, k * D, D), (T, D))]
        sh = [torch.randn(*s, generator=g).mul(0.05) for s in ((D, k * D), (k * D,), (k * D, D), (D,))]

        def mk(fn, params):  # noqa: ANN001, ANN202
            def run() -> torch.Tensor:
                with torch.no_grad():
                    return fn(x, *params)
            return run

        fns = {"bound": mk(single_gemm_bound, sh), **{n: mk(f, pt) for n, f in kernels.items()}}
        t = interleaved(fns, rounds=3, min_time=0.3)
        print(f"fp32 fwd B={B} " + " ".join(f"{n}={1e3 * t[n]:.1f}ms" for n in fns), flush=True)


if __name__ == "__main__":
    main()
