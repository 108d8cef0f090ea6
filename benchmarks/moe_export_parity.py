"""Sparse-MoE export parity: the .pt2 and .ts artifacts of a small MoE DLRM_RankMixer vs
the in-memory eval-mode (sparse) quantized model and vs dense execution with the same
h_infer gates.

Model: the tests' small spec (4 features, D=16, T=4, L=2) with ``use_moe=True``, E=4
experts of width 8, fresh init (seed 2). Prints, per artifact: ``moe_execution`` from
its metadata, export wall time, whether the reloaded artifact equals the in-memory
sparse model bit for bit (batch 1, 64, 512), and the max |logit diff| to dense
execution with the same gates; then the per-layer active-expert ratio.

Usage (run from the repository root; numbers in docs/inference.md, "Sparse-MoE models")::

    python benchmarks/moe_export_parity.py --out /tmp/moe_export_parity
"""

import argparse
import copy
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from inference_helpers import artifact_inputs, small_model, small_spec  # noqa: E402

from torchrec_rankmixer.inference.export import export_model  # noqa: E402
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE, configure_moe_inference  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/moe_export_parity", help="export directory root")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rc = dict(small_spec().rankmixer_config, use_moe=True, moe_num_experts=4, moe_expert_hidden=8)
    model = small_model(seed=2, rankmixer_config=rc)
    results = {}
    for art in ("export", "torchscript"):
        start = time.time()
        results[art] = (export_model(model, os.path.join(args.out, art), artifact=art), time.time() - start)
    ref = results["export"][0].module
    dense = copy.deepcopy(ref)
    configure_moe_inference(dense, execution="dense")
    inputs = [artifact_inputs(b, 100 + i) for i, b in enumerate((1, 64, 512))]
    with torch.inference_mode():
        for art, (res, secs) in results.items():
            loaded = torch.export.load(res.path).module() if art == "export" else torch.jit.load(res.path)
            equal = all(torch.equal(loaded(*x), ref(*x)) for x in inputs)
            diff = max(float((loaded(*x) - dense(*x)).abs().max()) for x in inputs)
            print(f"{art}: moe_execution={res.metadata['moe_execution']} export {secs:.1f} s, "
                  f"equal to in-memory sparse: {equal}, max |diff| vs dense-same-gates {diff:.2e}")
    ratios = [m.statistics()["active_ratio"] for m in ref.modules() if isinstance(m, PerTokenSparseMoE)]
    print("active ratio per layer (last batch):", [round(r, 3) for r in ratios])


if __name__ == "__main__":
    main()
