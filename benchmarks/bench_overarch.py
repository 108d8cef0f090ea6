"""Over-arch training speed: RankMixer vs TorchRec's DCNv2 at (nearly) equal dense parameters.

Both over-arches read the same pooled embeddings [B, F*E] (+ a dense vector [B, E]) and
train with Adam on BCE. RankMixer = SemanticTokenizer (one token per feature + one dense
token) + RankMixerEncoder + OverArch; DCNv2 = LowRankCrossNet + OverArch (exactly
``DLRM_DCN``'s interaction and over-arch). Reported per model: training samples/s, matmul
FLOPs per training step (torch's FlopCounterMode, forward + backward) and achieved
FLOP/s as a fraction of a same-run fp32 matmul peak (a square GEMM of ``--peak-n``).
Everything is timed interleaved, round by round, in one process.

Usage::

    python benchmarks/bench_overarch.py --batch 1024
"""

import argparse
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
from torchrec_rankmixer.modules.block import RankMixerEncoder  # noqa: E402


class RankMixerOver(nn.Module):
    """Tokenizer + encoder + OverArch on (dense [B, E], embeddings [B, F, E])."""

    def __init__(self, num_features: int, emb_dim: int, config: RankMixerConfig, over: list) -> None:
        super().__init__()
        self.keys = [f"f{i}" for i in range(num_features)]
        self.tokenizer = SemanticTokenizer(
            {k: emb_dim for k in self.keys}, config.d_model, groups={k: [k] for k in self.keys},
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
    return {
        "rankmixer": RankMixerOver(F, E, cfg, [args.d_model, 1]),
        "dcnv2": DCNv2Over(F, E, args.dcn_layers, args.dcn_low_rank, args.dcn_over + [1]),
    }


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
    p.add_argument("--json", default=None)
    args = p.parse_args()
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
    print(f"# machine: {machine_line()}; batch {B}; peak fp32 GEMM {peak_rate / 1e9:.1f} GFLOP/s")
    print("| over-arch | dense params | GFLOP/step | samples/s | GFLOP/s | fraction of peak |")
    print("|---|---|---|---|---|---|")
    rows = {}
    for name, m in models.items():
        params = sum(q.numel() for q in m.parameters())
        flops = step_flops(m, dense, emb)
        rate = flops / times[name]
        rows[name] = {"params": params, "flops_per_step": flops, "samples_per_s": B / times[name],
                      "flops_per_s": rate, "fraction_of_peak": rate / peak_rate}
        print(f"| {name} | {params / 1e6:.2f}M | {flops / 1e9:.2f} | {B / times[name]:.0f} | "
              f"{rate / 1e9:.1f} | {rate / peak_rate:.3f} |")
    ratio = rows["rankmixer"]["fraction_of_peak"] / rows["dcnv2"]["fraction_of_peak"]
    print(f"RankMixer fraction / DCNv2 fraction = {ratio:.2f}x; "
          f"samples/s ratio = {rows['rankmixer']['samples_per_s'] / rows['dcnv2']['samples_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peak_flops_per_s": peak_rate, "models": rows, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
