"""The tokenizer's projection kernels: one bmm over whole features (``auto``) against the
gather + padded ``baddbmm`` (``batched``), forward and forward + backward.

Each shape is a :class:`SemanticTokenizer` with F features of one width d grouped into T_s
tokens (the auto plan, so some tokens hold two features and the rest are zero-padded to
their width in the ``batched`` kernel). Candidates are timed interleaved, round by round,
in one process; the ratio ``batched / auto`` > 1 means the slot kernel is faster.

Usage::

    python benchmarks/bench_tokenizer.py                    # the shapes of docs/benchmarks.md
    python benchmarks/bench_tokenizer.py --quick --json out.json
"""

import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import interleaved, machine_line  # noqa: E402
from torchrec_rankmixer.features.tokenizer import SemanticTokenizer  # noqa: E402
from torchrec_rankmixer.ops.token_projection import slot_plan, token_projection  # noqa: E402

# (what the shape is, B, F, d, T_s, D)
SHAPES: Tuple[Tuple[str, int, int, int, int, int], ...] = (
    ("serving benchmark, batch 64", 64, 8, 64, 7, 64),
    ("serving benchmark, batch 512", 512, 8, 64, 7, 64),
    ("synthetic_context_rules", 512, 11, 16, 7, 64),
    ("frappe_x1", 4096, 10, 10, 7, 63),
)


def time_shape(batch: int, features: int, dim: int, tokens: int, d_model: int, rounds: int) -> Dict[str, float]:
    """Seconds per call (best of ``rounds``) of both kernels, forward and forward + backward.
    The slot kernel runs at every width here (``min_width=1``), including the widths below
    ``MIN_SLOT_WIDTH`` where the tokenizer keeps the gather kernel."""
    dims = {f"f{i}": dim for i in range(features)}
    tok = SemanticTokenizer(dims, d_model, num_sparse_tokens=tokens, kernel="batched")
    columns = [list(c) for c in tok.plan.columns]
    slots = slot_plan(columns, tok.total_width, min_width=1)
    if slots is None or tok._identity:
        raise ValueError(f"F={features}, d={dim}, T_s={tokens}: the plan has no slots, nothing to compare")
    token, row = torch.tensor(slots.token), torch.tensor(slots.row)
    chunk = None if slots.in_order else torch.tensor(slots.chunk)
    weight = tok.weight.detach().clone().requires_grad_()
    bias = tok.bias.detach().clone().requires_grad_()
    values = torch.randn(batch, features * dim)
    grad_values = values.clone().requires_grad_()

    def run(kernel: str, x: torch.Tensor) -> torch.Tensor:
        return token_projection(x, weight, bias, columns, tok.gather_index, kernel, slots.width, token, row, chunk)

    def step(kernel: str) -> None:
        weight.grad = bias.grad = grad_values.grad = None
        run(kernel, grad_values).sum().backward()

    fns = {
        "auto forward": lambda: run("auto", values),
        "batched forward": lambda: run("batched", values),
        "auto fwd+bwd": lambda: step("auto"),
        "batched fwd+bwd": lambda: step("batched"),
    }
    with torch.no_grad():
        torch.testing.assert_close(run("auto", values), run("batched", values), atol=1e-4, rtol=1e-4)
    return interleaved(fns, rounds=rounds)


def main(argv: List[str] | None = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="small batches, 1 round (a smoke run)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(machine_line())
    print("| shape | B | F x d -> T_s x D | forward: batched / auto | fwd+bwd: batched / auto |")
    print("|---|---|---|---|---|")
    for name, B, F, d, T, D in SHAPES:
        B = min(B, 64) if args.quick else B
        t = time_shape(B, F, d, T, D, 1 if args.quick else args.rounds)
        row = {"shape": name, "batch": B, "features": F, "dim": d, "tokens": T, "d_model": D,
               "seconds": t, "forward_ratio": t["batched forward"] / t["auto forward"],
               "fwd_bwd_ratio": t["batched fwd+bwd"] / t["auto fwd+bwd"]}
        rows.append(row)
        print(f"| {name} | {B} | {F} x {d} -> {T} x {D} | {row['forward_ratio']:.2f}x | {row['fwd_bwd_ratio']:.2f}x |")
    report = {"machine": machine_line(), "threads": args.threads, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
