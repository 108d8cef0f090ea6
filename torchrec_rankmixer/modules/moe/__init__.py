"""Sparse-MoE for RankMixer (paper section 3.4): per-token experts, ReLU routing with an
adaptive L1 target, DTSI (dense-training / sparse-inference) and its serving calibration.

One file per part: ``layer`` (:class:`PerTokenSparseMoE`), ``experts``, ``router``,
``adaptive_l1``, ``dtsi`` (path draw, inference switch), ``calibration`` and
``statistics``; ``swiglu`` holds the TokenMixer-Large variant (pSwiGLU experts and a
shared expert). Formulation and results: docs/moe.md.
"""

from torchrec_rankmixer.modules.moe.adaptive_l1 import AdaptiveL1
from torchrec_rankmixer.modules.moe.calibration import calibrate_moe_routers, calibrate_on_batches
from torchrec_rankmixer.modules.moe.dtsi import configure_moe_inference, moe_layers
from torchrec_rankmixer.modules.moe.experts import TokenExperts
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.moe.router import TokenRouter, topk_softmax_gates
from torchrec_rankmixer.modules.moe.statistics import collect_statistics, reset_statistics
from torchrec_rankmixer.modules.moe.swiglu import PerTokenSwiGLUMoE, SwiGLUTokenExperts

__all__ = [
    "AdaptiveL1",
    "PerTokenSparseMoE",
    "PerTokenSwiGLUMoE",
    "SwiGLUTokenExperts",
    "TokenExperts",
    "TokenRouter",
    "calibrate_moe_routers",
    "calibrate_on_batches",
    "collect_statistics",
    "configure_moe_inference",
    "moe_layers",
    "reset_statistics",
    "topk_softmax_gates",
]
