"""Over-arch training speed: RankMixer vs TorchRec's DCNv2 at (nearly) equal dense parameters.

Both over-arches read the same pooled embeddings [B, F*E] (+ a dense vector [B, E]) and
train with Adam on BCE. RankMixer = SemanticTokenizer + RankMixerEncoder + OverArch;
DCNv2 = LowRankCrossNet + OverArch (exactly ``DLRM_DCN``'s interaction and over-arch).
Reported per model: training samples/s, matmul FLOPs per training step (torch's
FlopCounterMode, forward + backward) and achieved FLOP/s as a fraction of a same-run fp32
matmul peak (a square GEMM of ``--peak-n``). Everything is timed interleaved, round by
round, in one process, on ``--threads`` intra-op threads.

Rows: ``rankmixer`` has one token per feature (T = F + 1); ``--tokens t ...`` adds
RankMixer rows that group the F features into t - 1 tokens (+ 1 dense token), with the
multiple of t for D that brings the parameters closest to DCNv2's; ``--default-block``
adds the same rows for the block ``DLRM_RankMixer`` builds without a config
(TokenMixer-Large at k = 1, models/defaults.py), D again matched to DCNv2's parameters;
``--compile`` adds a
``torch.compile``d copy of every model; ``--profile`` prints where the one-token-per-feature
rows' forward + backward spend their time (self CPU time by op family, torch.profiler).
glibc malloc keeps freed memory (``keep_freed_memory``, as ``rankmixer-train`` does on
CPU) unless ``--no-keep-freed-memory``: the allocator is process-wide, so the two settings
compare across two runs, each with its own DCNv2 row.

Usage::

    python benchmarks/bench_overarch.py --batch 512 --tokens 8 4 --profile
"""

import argparse
import copy
import json
import os
import sys
from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import interleaved, machine_line  # noqa: E402
from torchrec.models.dlrm import InteractionDCNArch, OverArch  # noqa: E402
from torchrec.modules.crossnet import LowRankCrossNet  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedTensor  # noqa: E402

from torchrec_rankmixer import RankMixerConfig, SemanticTokenizer  # noqa: E402
from torchrec_rankmixer.models.defaults import BLOCK_DEFAULTS, DEFAULT_BLOCK  # noqa: E402
from torchrec_rankmixer.modules.block import RankMixerEncoder  # noqa: E402
from torchrec_rankmixer.utils.malloc import keep_freed_memory  # noqa: E402


class RankMixerOver(nn.Module):
    """Tokenizer + encoder + OverArch on (dense [B, E], embeddings [B, F, E]); one token per
    feature when ``config.num_tokens`` is F + 1, else contiguous groups of features."""

    def __init__(self, num_features: int, emb_dim: int, config: RankMixerConfig, over: list) -> None:
        super().__init__()
        self.keys = [f"f{i}" for i in range(num_features)]
        per_feature = config.num_tokens == num_features + 1
        self.tokenizer = SemanticTokenizer(
            {k: emb_dim for k in self.keys}, config.d_model, num_sparse_tokens=config.num_tokens - 1,
            groups={k: [k] for k in self.keys} if per_feature else None,
            dense_in_features=emb_dim, num_dense_tokens=1,
        )
        self.encoder = RankMixerEncoder(config)
        self.over = OverArch(config.output_dim, over)

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        B, F, E = emb.shape
        kt = KeyedTensor(keys=self.keys, length_per_key=[E] * F, values=emb.reshape(B, F * E))
        return self.over(self.encoder(self.tokenizer(kt, dense)))  # (B, 1)


class DCNv2Over(nn.Module):
    """DLRM_DCN's InteractionDCNArch (LowRankCrossNet) + OverArch."""

    def __init__(self, num_features: int, emb_dim: int, layers: int, low_rank: int, over: list) -> None:
        super().__init__()
        width = (num_features + 1) * emb_dim
        self.inter = InteractionDCNArch(num_features, LowRankCrossNet(width, layers, low_rank))
        self.over = OverArch(width, over)

    def forward(self, dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.over(self.inter(dense, emb))  # (B, 1)


def build(args: argparse.Namespace) -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    F, E = args.features, args.emb_dim
    cfg = RankMixerConfig(d_model=args.d_model, num_tokens=F + 1, num_layers=args.layers)
    models: Dict[str, nn.Module] = {
        "rankmixer": RankMixerOver(F, E, cfg, [args.d_model, 1]),
        "dcnv2": DCNv2Over(F, E, args.dcn_layers, args.dcn_low_rank, args.dcn_over + [1]),
    }
    target = sum(p.numel() for p in models["dcnv2"].parameters())
    tokens = list(getattr(args, "tokens", None) or [])
    matched = [("rankmixer", {}, t) for t in tokens]  # (row prefix, block settings, T), D matched below
    if getattr(args, "default_block", False):
        default = {"block": DEFAULT_BLOCK, **BLOCK_DEFAULTS[DEFAULT_BLOCK]}
        matched += [(DEFAULT_BLOCK, default, t) for t in [F + 1] + tokens]
    for prefix, block, t in matched:
        def grouped(d: int, t: int = t, block: dict = block) -> nn.Module:
            return RankMixerOver(F, E, RankMixerConfig(d_model=d, num_tokens=t, num_layers=args.layers, **block),
                                 [d, 1])
        d = min(range(t, 4 * args.d_model, t),
                key=lambda d: abs(sum(p.numel() for p in grouped(d).parameters()) - target))
        models[f"{prefix} T={t} D={d}"] = grouped(d)
    if getattr(args, "compile", False):
        for name in list(models):
            models[f"{name} (compiled)"] = copy.deepcopy(models[name])
            models[f"{name} (compiled)"].compile()
    return models


def train_step_fn(model: nn.Module, dense: torch.Tensor, emb: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()

    def step() -> None:
        loss = loss_fn(model(dense, emb)[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def step_flops(model: nn.Module, dense: torch.Tensor, emb: torch.Tensor) -> int:
    """Matmul FLOPs of forward + backward (input grads included, as embeddings need them)."""
    emb = emb.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        model(dense, emb).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


FAMILIES = {  # op name fragments -> family, first match wins
    "matmul": ("bmm", "mm", "linear"), "gelu / silu": ("gelu", "silu"), "layer_norm": ("layer_norm",),
    "rms_norm": ("rms_norm", "pow", "rsqrt", "mean"),
    "copy / add / sum": ("copy", "add", "sum", "cat", "clone", "contiguous", "mul", "div", "fill", "zero"),
}


def profile_fwd_bwd(model: nn.Module, dense: torch.Tensor, emb: torch.Tensor, calls: int = 3) -> Dict[str, float]:
    """Fraction of forward + backward self CPU time per op family (``FAMILIES``, else other)."""
    from torch.profiler import ProfilerActivity, profile

    def fwd_bwd() -> None:
        model(dense, emb).sum().backward()

    fwd_bwd()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fwd_bwd()
    model.zero_grad(set_to_none=True)
    out: Dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("autograd::", "## ")) or event.key.endswith("Backward0"):
            continue  # wrappers: their children are counted
        family = next((f for f, keys in FAMILIES.items() if any(k in event.key for k in keys)), "other")
        out[family] = out.get(family, 0.0) + event.self_cpu_time_total
    total = sum(out.values())
    return {k: v / total for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def peak_fn(n: int) -> Tuple[object, int]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return (lambda: torch.mm(a, b)), 2 * n**3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--features", type=int, default=15, help="F sparse features (T = F + 1)")
    p.add_argument("--emb-dim", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dcn-layers", type=int, default=3)
    p.add_argument("--dcn-low-rank", type=int, default=256)
    p.add_argument("--dcn-over", type=int, nargs="+", default=[1024, 1024, 640])
    p.add_argument("--peak-n", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, nargs="*", default=[], help="also RankMixer with T tokens (grouped)")
    p.add_argument("--default-block", action="store_true",
                   help="also the default block (TokenMixer-Large, k = 1) at DCNv2's parameters")
    p.add_argument("--compile", action="store_true", help="also torch.compile'd copies of every model")
    p.add_argument("--profile", action="store_true", help="op-family breakdown of the one-token-per-feature rows' steps")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="glibc malloc keeps freed blocks (utils/malloc.py; rankmixer-train's CPU default)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    torch.set_num_threads(args.threads)
    models = build(args)
    g = torch.Generator().manual_seed(0)
    B, F, E = args.batch, args.features, args.emb_dim
    dense, emb = torch.randn(B, E, generator=g), torch.randn(B, F, E, generator=g).requires_grad_(True)
    y = (torch.rand(B, generator=g) < 0.3).float()
    fns = {name: train_step_fn(m, dense, emb, y) for name, m in models.items()}
    peak, peak_flops = peak_fn(args.peak_n)
    fns["peak_gemm"] = peak
    times = interleaved(fns, rounds=args.rounds, min_time=0.5)
    peak_rate = peak_flops / times["peak_gemm"]
    print(f"# machine: {machine_line()}; batch {B}; peak fp32 GEMM {peak_rate / 1e9:.1f} GFLOP/s; "
          f"freed memory {'kept' if kept else 'returned (system malloc)'}")
    print("| over-arch | dense params | GFLOP/step | samples/s | GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, m in models.items():
        params = sum(q.numel() for q in m.parameters())
        flops = step_flops(models[name.replace(" (compiled)", "")], dense, emb)
        rate = flops / times[name]
        rows[name] = {"params": params, "flops_per_step": flops, "samples_per_s": B / times[name],
                      "flops_per_s": rate, "fraction_of_peak": rate / peak_rate}
        print(f"| {name} | {params / 1e6:.2f}M | {flops / 1e9:.2f} | {B / times[name]:.0f} | "
              f"{rate / 1e9:.1f} | {rate / peak_rate:.3f} |")
    for name, r in rows.items():
        base = rows["dcnv2 (compiled)" if name.endswith("(compiled)") else "dcnv2"]
        if isinstance(models[name], RankMixerOver):
            print(f"{name}: fraction of peak / DCNv2's = {r['fraction_of_peak'] / base['fraction_of_peak']:.2f}x, "
                  f"samples/s ratio {r['samples_per_s'] / base['samples_per_s']:.2f}x")
    profiled = [n for n, m in models.items() if isinstance(m, RankMixerOver)  # one token per feature, eager
                and m.encoder.config.num_tokens == F + 1 and not n.endswith("(compiled)")]
    breakdown = {n: profile_fwd_bwd(models[n], dense, emb) for n in profiled} if args.profile else None
    for name, shares in (breakdown or {}).items():
        print(f"{name} forward + backward, self CPU time: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flops_per_s": peak_rate, "models": rows, "profile": breakdown, "args": vars(args),
                       "machine": machine_line(), "freed_memory_kept": kept},
                      f, indent=1)


if __name__ == "__main__":
    main()
