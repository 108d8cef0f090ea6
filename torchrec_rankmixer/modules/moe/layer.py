"""PerTokenSparseMoE: each token's FFN becomes E experts with ReLU routing (RankMixer 3.4).

The parts live beside this file: experts.py (the E GELU FFNs per token), router.py
(routers, top-k, ratio offset, gradient injection), adaptive_l1.py (the L1 penalty and
its controller), dtsi.py (path draw, inference switch), calibration.py (serving-time
router calibration), statistics.py. Formulation and results: docs/moe.md.
"""

from typing import Any, Dict, Optional

import torch
from torch import nn

from torchrec_rankmixer.config import (
    MOE_OFFSET_PER,
    MOE_PATH_DRAWS,
    MOE_ROUTERS,
    MOE_TRAIN_GATES,
    RankMixerConfig,
)
from torchrec_rankmixer.modules.moe.adaptive_l1 import AdaptiveL1
from torchrec_rankmixer.modules.moe.dtsi import check_inference_switch, check_path_mask, path_pick, train_gates
from torchrec_rankmixer.modules.moe.experts import TokenExperts
from torchrec_rankmixer.modules.moe.router import TokenRouter, topk_softmax_gates, update_ratio_offset
from torchrec_rankmixer.modules.moe.statistics import RoutingStatistics
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.utils.checks import check_choice, check_float, check_positive_ints

# state-dict names before the experts moved into ``experts`` (torchrec-rankmixer 0.1)
_LEGACY_EXPERT_KEYS = ("w1", "b1", "w2", "b2")


class PerTokenSparseMoE(nn.Module):
    """Per-token Sparse-MoE FFN, a drop-in for :class:`PerTokenFFN` on [B, T, D].

    Token t owns E GELU experts ``f_te: D -> h -> D`` (:class:`TokenExperts`) and its
    own router(s); output ``y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])``. Routers
    (``router``):

    - ``"dtsi"`` (paper): h_infer and h_train, gates ``ReLU(h_infer(x) + o)`` and
      ``softplus(h_train(x))`` (``train_gate``; o the ratio offset). Training computes
      every expert (dense) and routes each sample (``path_draw="sample"``; or each
      (sample, token), ``"token"``) by h_train's gates with probability
      ``dense_path_prob``, by h_infer's otherwise (dtsi.py). Inside a
      :class:`RankMixerEncoder` the per-sample draw is shared by all its MoE layers
      (:meth:`set_path_mask`). The adaptive L1 (:class:`AdaptiveL1`) acts on h_infer
      only. Inference uses only h_infer and runs only its active experts. The ratio
      offset ``o`` (a buffer of ``router_infer``) moves by
      ``offset_rate * sign(target - r)`` after each training forward.
    - ``"relu"``: one ReLU router with the adaptive L1 and the ratio offset (ablation: no h_train).
    - ``"topk"``: vanilla top-k softmax with a load-balancing loss (baseline).

    Penalties are trained by gradient injection (no auxiliary loss to add; docs/moe.md).
    Evaluation executes sparsely unless :meth:`configure_inference` says otherwise.

    Args:
        num_tokens: T.
        d_model: D.
        num_experts: E experts per token.
        expert_hidden: h, hidden width of each expert.
        router: ``"dtsi"``, ``"relu"`` or ``"topk"``.
        target_active_ratio: target mean fraction of active experts (top-k: k/E).
        l1_kp: proportional gain of the L1 controller (ReLU routers).
        l1_ki: integral gain of the L1 controller.
        balance_coef: load-balancing loss weight (top-k).
        dense_path_prob: DTSI probability of routing a training sample by h_train.
        path_draw: DTSI: ``"sample"`` (one draw per sample) or ``"token"`` (per
            (sample, token)).
        offset_rate: ReLU routers: step of the non-gradient ratio offset on h_infer's
            logits (``o += rate * sign(target - r)`` per training forward); 0: none.
        offset_per: ``"expert"`` (r per (token, expert)) or ``"token"`` (r per token).
        train_gate: DTSI h_train gate, ``"softplus"`` (dense) or ``"relu"``.
        kernel: how the experts run (ops/kernels.py); dense training and sparse
            inference both use it.
        device: where to allocate (``"meta"`` works).
        experts: the experts, built for the same T, D and E; default: GELU
            :class:`TokenExperts` of width ``expert_hidden``. Any module with
            ``weights``, ``forward(x, gates, sparse, kernel)`` and ``sparse(x, gates,
            kernel)`` fits, e.g. TokenMixer-Large's pSwiGLU experts
            (:class:`~torchrec_rankmixer.modules.moe.swiglu.SwiGLUTokenExperts`).

    Shapes:
        x: [B, T, D] -> [B, T, D]. Experts: w1 [T, E, D, h], b1 [T, E, h],
        w2 [T, E, h, D], b2 [T, E, D]; each router: weight [T, D, E], bias [T, E].

    Example::

        >>> moe = PerTokenSparseMoE(num_tokens=4, d_model=8, num_experts=4, expert_hidden=16)
        >>> x = torch.randn(3, 4, 8)
        >>> moe(x).shape
        torch.Size([3, 4, 8])
        >>> _ = moe.eval()
        >>> y_sparse = moe(x)
        >>> _ = moe.configure_inference(execution="dense")
        >>> torch.allclose(y_sparse, moe(x), atol=1e-5)
        True
        >>> sorted(moe.statistics())[:2]
        ['active_ratio', 'active_ratio_t0']
    """

    def __init__(
        self,
        num_tokens: int,
        d_model: int,
        num_experts: int = 8,
        expert_hidden: int = 64,
        router: str = "dtsi",
        target_active_ratio: float = 0.25,
        l1_kp: float = 0.5,
        l1_ki: float = 0.01,
        balance_coef: float = 0.01,
        dense_path_prob: float = 0.5,
        offset_rate: float = 0.01,
        offset_per: str = "expert",
        train_gate: str = "softplus",
        path_draw: str = "sample",
        kernel: str = "auto",
        device: torch.device | str | None = None,
        experts: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        check_positive_ints({"num_tokens": num_tokens, "d_model": d_model,
                             "num_experts": num_experts, "expert_hidden": expert_hidden})
        check_choice("router", router, MOE_ROUTERS)
        check_float("target_active_ratio", target_active_ratio, 0.0, 1.0, "(]")
        check_float("l1_kp", l1_kp, 0.0, float("inf"), "[)")
        check_float("l1_ki", l1_ki, 0.0, float("inf"), "()")
        check_float("balance_coef", balance_coef, 0.0, float("inf"), "[)")
        check_float("dense_path_prob", dense_path_prob, 0.0, 1.0, "[)")
        check_float("offset_rate", offset_rate, 0.0, float("inf"), "[)")
        check_choice("offset_per", offset_per, MOE_OFFSET_PER)
        check_choice("train_gate", train_gate, MOE_TRAIN_GATES)
        check_choice("path_draw", path_draw, MOE_PATH_DRAWS)
        self.kernel = check_kernel("kernel", kernel)
        self.top_k = round(target_active_ratio * num_experts)
        if router == "topk" and self.top_k < 1:
            raise ValueError(
                f"target_active_ratio ({target_active_ratio}) * num_experts ({num_experts}) "
                "rounds to 0 experts for top-k routing"
            )
        T, E, D = num_tokens, num_experts, d_model
        self.num_tokens, self.d_model, self.num_experts, self.expert_hidden = T, D, E, expert_hidden
        self.router, self.target_active_ratio = router, float(target_active_ratio)
        self.balance_coef, self.dense_path_prob = float(balance_coef), float(dense_path_prob)
        self.offset_rate = float(offset_rate) if router != "topk" else 0.0
        self.offset_per, self.train_gate, self.path_draw = offset_per, train_gate, path_draw
        self._path_mask: Optional[torch.Tensor] = None
        self.experts = experts if experts is not None else TokenExperts(T, D, E, expert_hidden, device=device)
        if tuple(self.experts.weights[0].shape[:3]) != (T, E, D):
            raise ValueError(
                f"experts hold weights {tuple(self.experts.weights[0].shape)}; this MoE needs "
                f"[T, E, D, ...] = {(T, E, D)}"
            )
        self.router_infer = TokenRouter(T, D, E, offset=self.offset_rate > 0, device=device)
        self.router_train: Optional[TokenRouter] = (
            TokenRouter(T, D, E, device=device) if router == "dtsi" else None
        )
        self.l1: Optional[AdaptiveL1] = (
            AdaptiveL1(target_active_ratio, l1_kp, l1_ki) if router != "topk" else None
        )
        self.execution, self.eval_router, self.sparse_kernel = "sparse", "infer", self.kernel
        self.stats = RoutingStatistics(T, E)
        self._register_load_state_dict_pre_hook(_legacy_expert_keys)

    @classmethod
    def from_config(
        cls, config: RankMixerConfig, device: torch.device | str | None = None,
        experts: Optional[nn.Module] = None,
    ) -> "PerTokenSparseMoE":
        """The MoE a :class:`RankMixerConfig` with ``use_moe=True`` describes; given
        ``experts``, their ``num_tokens``, ``d_model`` and ``expert_hidden`` size it."""
        T, D, h = config.num_tokens, config.d_model, config.moe_hidden
        if experts is not None:
            T, D, h = experts.num_tokens, experts.d_model, experts.expert_hidden
        return cls(
            T, D, config.moe_num_experts, h,
            router=config.moe_router, target_active_ratio=config.moe_target_active_ratio,
            l1_kp=config.moe_l1_kp, l1_ki=config.moe_l1_ki,
            balance_coef=config.moe_balance_coef, dense_path_prob=config.moe_dense_path_prob,
            offset_rate=config.moe_offset_rate, offset_per=config.moe_offset_per,
            train_gate=config.moe_train_gate, path_draw=config.moe_path_draw,
            kernel=config.kernel, device=device, experts=experts,
        )

    def configure_inference(
        self, execution: str = "sparse", router: str = "infer", sparse_kernel: str = "auto"
    ) -> "PerTokenSparseMoE":
        """How eval-mode forwards run (the DTSI inference switch, dtsi.py).

        Args:
            execution: ``"sparse"`` (only active experts) or ``"dense"`` (every expert,
                same gates; for checks and benchmarks).
            router: ``"infer"`` (h_infer, the deployed path) or ``"train"`` (DTSI's
                h_train gates, dense; the "dense-gated" comparison in docs/moe.md).
            sparse_kernel: the sparse execution's kernel (ops/kernels.py).
        """
        check_inference_switch(execution, router, sparse_kernel, self.router_train is not None)
        self.execution, self.eval_router, self.sparse_kernel = execution, router, sparse_kernel
        return self

    @property
    def draws_dtsi_paths(self) -> bool:
        """True when training routes each sample by one of the two DTSI routers."""
        return self.router_train is not None and self.dense_path_prob > 0

    def set_path_mask(self, mask: Optional[torch.Tensor]) -> None:
        """Fix the DTSI path of each sample for the following training forwards.

        :class:`RankMixerEncoder` draws one [B] bool mask per training forward (True:
        route the sample by h_train) and gives it to every MoE layer, then clears it
        (``None``: each forward draws its own, per ``path_draw``).
        """
        check_path_mask(mask)
        self._path_mask = mask

    # ------------------------------------------------------------------ forward
    def _infer_gates(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router_infer(x)  # (B, T, E)
        if self.router == "topk":
            coef = self.balance_coef if self.training else 0.0
            gates, self.stats.balance = topk_softmax_gates(logits, self.top_k, coef)
            return gates
        if self.l1 is None:  # every ReLU router has one (__init__)
            raise RuntimeError("ReLU-routed MoE without its AdaptiveL1")
        gates = self.l1(logits)  # ReLU gates, penalty trained by gradient injection
        if self.training and self.router_infer.offset is not None:
            update_ratio_offset(self.router_infer.offset, gates, self.target_active_ratio,
                                self.offset_rate, self.offset_per)
        return gates

    def _train_gates(self, x: torch.Tensor) -> torch.Tensor:
        if self.router_train is None:
            raise RuntimeError("h_train gates need the 'dtsi' router")
        return train_gates(self.router_train(x), self.train_gate)  # (B, T, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self._infer_gates(x)  # (B, T, E), h_infer's
        if not torch.compiler.is_exporting():  # statistics stay out of exported graphs
            self.stats.record(gates)
        if self.training:
            used = gates
            if self.draws_dtsi_paths:
                g_train = self._train_gates(x)  # (B, T, E)
                self.stats.train_ratio = (g_train > 0).float().mean().detach()
                pick = path_pick(x, self._path_mask, self.path_draw, self.dense_path_prob)
                used = torch.where(pick, g_train, gates)  # (B, T, E)
            return self.experts(x, used, sparse=False, kernel=self.kernel)
        if self.eval_router == "train" and self.router_train is not None:
            return self.experts(x, self._train_gates(x), sparse=False, kernel=self.kernel)
        if self.execution == "dense":
            return self.experts(x, gates, sparse=False, kernel=self.kernel)
        return self.experts.sparse(x, gates, self.sparse_kernel)

    # ------------------------------------------------------------------ statistics
    def reset_statistics(self) -> None:
        """Start a new window for utilisation / dead-expert counts."""
        self.stats.reset()

    def expert_utilisation(self) -> torch.Tensor:
        """[T, E]: fraction of rows in the window that activated each expert (h_infer)."""
        return self.stats.utilisation()

    def statistics(self) -> Dict[str, float]:
        """Routing statistics (:meth:`RoutingStatistics.summary`) plus the controller
        state: ``l1_coef`` / ``l1_integral`` (ReLU routers) and ``ratio_offset_mean``
        (mean of h_infer's ratio offset, when ``offset_rate > 0``); {} before any forward.
        """
        stats = self.stats.summary()
        if not stats:
            return {}
        if self.router_infer.offset is not None:
            stats["ratio_offset_mean"] = float(self.router_infer.offset.mean())
        if self.l1 is not None:
            stats["l1_coef"] = float(self.l1.coef)
            stats["l1_integral"] = float(self.l1.integral)
        return stats


def _legacy_expert_keys(state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load state dicts saved before the experts moved to ``experts.*`` (0.1: ``w1`` ...)."""
    for key in _LEGACY_EXPERT_KEYS:
        old = prefix + key
        if old in state_dict:
            state_dict[f"{prefix}experts.{key}"] = state_dict.pop(old)

