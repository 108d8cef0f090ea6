"""Why the eval active ratio of a DTSI MoE differs from its target (docs/moe.md).

Trains like ``moe_quality.py`` (same model and data), logs the per-layer training batch
ratio every 10 steps, then measures the per-layer h_infer ratio of the final model on
16 held-out training batches in train mode (mixed DTSI path), train mode with the pure
h_infer path, and eval mode. No calibration is applied.

Usage::

    PYTHONPATH=. python benchmarks/moe_ratio_diagnosis.py --target 0.5
"""

import argparse
import statistics
from typing import List, Optional

import torch

from benchmarks.moe_quality import build
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE, reset_statistics
from torchrec_rankmixer.train.simple import train_simple


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offset-rate", type=float, default=0.01, help="moe_offset_rate (0: the earlier L1-only control)")
    p.add_argument("--train-gate", default="softplus", choices=["relu", "softplus"], help="moe_train_gate")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    args = argparse.Namespace(experts=8, hidden=64, l1_kp=0.5, l1_ki=0.01, dense_path_prob=0.5, embedding_dim=16,
                              offset_rate=a.offset_rate, offset_per="expert", train_gate=a.train_gate)
    torch.manual_seed(a.seed)
    data = SyntheticClickData(seed=a.seed)
    model = build(data, "dtsi", a.target, args)
    hist = []
    train_simple(model, data.batches(256, a.steps), log_every=10, lr=1e-3,
                 on_stats=lambda s, st: hist.append((s, [v for k, v in st.items() if k.endswith(".active_ratio")])))
    moes = [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]
    for layer in range(len(moes)):
        tail = [h[1][layer] for h in hist if h[0] >= a.steps - 200]
        print(f"layer {layer}: training batch ratio, last 200 steps: mean {statistics.mean(tail):.3f} "
              f"min {min(tail):.3f} max {max(tail):.3f}; last logged {hist[-1][1][layer]:.3f}")
    held_out = list(data.batches(256, 16, start=a.steps))

    def per_layer(train: bool) -> List[float]:
        model.train(train)
        reset_statistics(model)
        with torch.no_grad():
            for b in held_out:
                model(b.dense_features, b.sparse_features)
        return [round(float(m.expert_utilisation().mean()), 3) for m in moes]

    print("train mode (mixed DTSI path):", per_layer(True))
    print("eval mode:", per_layer(False))
    for m in moes:
        m.dense_path_prob = 0.0
    print("train mode, pure h_infer path:", per_layer(True))


if __name__ == "__main__":
    main()
