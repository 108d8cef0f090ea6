"""PerTokenSparseMoE: each token's FFN becomes E experts with ReLU routing (RankMixer 3.4).

Formulation, controller and the penalty mechanism are written down in docs/moe.md.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.config import (
    MOE_OFFSET_PER,
    MOE_PATH_DRAWS,
    MOE_ROUTERS,
    MOE_TRAIN_GATES,
    RankMixerConfig,
    _check_choice,
    _check_float,
    _check_positive_int,
)
from torchrec_rankmixer.modules.moe_router import (
    AdaptiveL1,
    TokenRouter,
    topk_softmax_gates,
    update_ratio_offset,
)
from torchrec_rankmixer.modules.per_token_ffn import _init_linear_stack
from torchrec_rankmixer.ops.moe import SPARSE_KERNELS, moe_experts_dense, moe_experts_sparse

# A leaf for FX symbolic tracing (data-dependent shapes cannot be traced symbolically);
# the TorchScript export points these calls at the scriptable moe_experts_sparse_resolved.
torch.fx.wrap("moe_experts_sparse")

EXECUTIONS: Tuple[str, ...] = ("sparse", "dense")
EVAL_ROUTERS: Tuple[str, ...] = ("infer", "train")


class PerTokenSparseMoE(nn.Module):
    """Per-token Sparse-MoE FFN, a drop-in for :class:`PerTokenFFN` on [B, T, D].

    Token t owns E GELU experts ``f_te: D -> h -> D`` and its own router(s); output
    ``y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])``. Routers (``router``):

    - ``"dtsi"`` (paper): h_infer and h_train, gates ``ReLU(h_infer(x) + o)`` and
      ``softplus(h_train(x))`` (``train_gate``; o the ratio offset). Training
      computes every expert (dense); each sample (``path_draw="sample"``; or each
      (sample, token), ``"token"``) uses h_train's gates with probability
      ``dense_path_prob`` and h_infer's otherwise, so both routers get the task
      gradient. Inside a :class:`RankMixerEncoder` the per-sample draw is shared by
      all its MoE layers (:meth:`set_path_mask`), so a sample trains either the whole
      h_train model or the whole h_infer model; the adaptive L1 (:class:`AdaptiveL1`) acts on h_infer only.
      Inference uses only h_infer and runs only its active experts. The ratio offset
      ``o`` (a buffer of ``router_infer``) moves by ``offset_rate * sign(target - r)``
      after each training forward (:func:`update_ratio_offset`).
    - ``"relu"``: one ReLU router with the adaptive L1 and the ratio offset (ablation: no h_train).
    - ``"topk"``: vanilla top-k softmax with a load-balancing loss (baseline).

    Penalties are trained by gradient injection (no auxiliary loss to add; see
    docs/moe.md). Evaluation executes sparsely (:func:`moe_experts_sparse`) unless
    :meth:`configure_inference` says otherwise.

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
        device: where to allocate (``"meta"`` works).

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
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_tokens", num_tokens), ("d_model", d_model),
                            ("num_experts", num_experts), ("expert_hidden", expert_hidden)):
            _check_positive_int(name, value)
        _check_choice("router", router, MOE_ROUTERS)
        _check_float("target_active_ratio", target_active_ratio, 0.0, 1.0, "(]")
        _check_float("l1_kp", l1_kp, 0.0, float("inf"), "[)")
        _check_float("l1_ki", l1_ki, 0.0, float("inf"), "()")
        _check_float("balance_coef", balance_coef, 0.0, float("inf"), "[)")
        _check_float("dense_path_prob", dense_path_prob, 0.0, 1.0, "[)")
        _check_float("offset_rate", offset_rate, 0.0, float("inf"), "[)")
        _check_choice("offset_per", offset_per, MOE_OFFSET_PER)
        _check_choice("train_gate", train_gate, MOE_TRAIN_GATES)
        _check_choice("path_draw", path_draw, MOE_PATH_DRAWS)
        self.top_k = round(target_active_ratio * num_experts)
        if router == "topk" and self.top_k < 1:
            raise ValueError(
                f"target_active_ratio ({target_active_ratio}) * num_experts ({num_experts}) "
                "rounds to 0 experts for top-k routing"
            )
        T, E, D, h = num_tokens, num_experts, d_model, expert_hidden
        self.num_tokens, self.d_model, self.num_experts, self.expert_hidden = T, D, E, h
        self.router, self.target_active_ratio = router, float(target_active_ratio)
        self.balance_coef, self.dense_path_prob = float(balance_coef), float(dense_path_prob)
        self.offset_rate = float(offset_rate) if router != "topk" else 0.0
        self.offset_per, self.train_gate, self.path_draw = offset_per, train_gate, path_draw
        self._path_mask: Optional[torch.Tensor] = None
        self.w1 = nn.Parameter(torch.empty(T, E, D, h, device=device))
        self.b1 = nn.Parameter(torch.empty(T, E, h, device=device))
        self.w2 = nn.Parameter(torch.empty(T, E, h, D, device=device))
        self.b2 = nn.Parameter(torch.empty(T, E, D, device=device))
        self.router_infer = TokenRouter(T, D, E, offset=self.offset_rate > 0, device=device)
        self.router_train: Optional[TokenRouter] = (
            TokenRouter(T, D, E, device=device) if router == "dtsi" else None
        )
        self.l1: Optional[AdaptiveL1] = (
            AdaptiveL1(target_active_ratio, l1_kp, l1_ki) if router != "topk" else None
        )
        self.execution, self.eval_router, self.sparse_kernel = "sparse", "infer", "auto"
        self.reset_parameters()
        self.reset_statistics()

    @classmethod
    def from_config(
        cls, config: RankMixerConfig, device: torch.device | str | None = None
    ) -> "PerTokenSparseMoE":
        """The MoE a :class:`RankMixerConfig` with ``use_moe=True`` describes."""
        return cls(
            config.num_tokens, config.d_model, config.moe_num_experts, config.moe_hidden,
            router=config.moe_router, target_active_ratio=config.moe_target_active_ratio,
            l1_kp=config.moe_l1_kp, l1_ki=config.moe_l1_ki,
            balance_coef=config.moe_balance_coef, dense_path_prob=config.moe_dense_path_prob,
            offset_rate=config.moe_offset_rate, offset_per=config.moe_offset_per,
            train_gate=config.moe_train_gate, path_draw=config.moe_path_draw, device=device,
        )

    def reset_parameters(self) -> None:
        if self.w1.is_meta:
            return
        _init_linear_stack(self.w1, self.b1, self.d_model)
        _init_linear_stack(self.w2, self.b2, self.expert_hidden)

    def configure_inference(
        self, execution: str = "sparse", router: str = "infer", sparse_kernel: str = "auto"
    ) -> "PerTokenSparseMoE":
        """How eval-mode forwards run.

        Args:
            execution: ``"sparse"`` (only active experts) or ``"dense"`` (every expert,
                same gates; for checks and benchmarks).
            router: ``"infer"`` (h_infer, the deployed path) or ``"train"`` (DTSI's
                h_train gates, dense; the "dense-gated" comparison in docs/moe.md).
            sparse_kernel: one of ``"auto"``, ``"padded_bmm"``, ``"grouped_mm"``, ``"loop"``.
        """
        _check_choice("execution", execution, EXECUTIONS)
        _check_choice("router", router, EVAL_ROUTERS)
        _check_choice("sparse_kernel", sparse_kernel, SPARSE_KERNELS)
        if router == "train" and self.router_train is None:
            raise ValueError(f"router ('train') needs the 'dtsi' router (this MoE uses {self.router!r})")
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
        if mask is not None and (mask.dim() != 1 or mask.dtype != torch.bool):
            raise ValueError(f"path mask must be a [B] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
        self._path_mask = mask

    def _path_pick(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 1] or [B, T, 1] bool: which rows use h_train's gates in training."""
        B, T = x.shape[0], x.shape[1]
        if self._path_mask is not None:
            if self._path_mask.shape[0] != B:
                raise ValueError(f"path mask has {self._path_mask.shape[0]} rows, the batch has {B}")
            return self._path_mask.view(B, 1, 1)
        shape = (B, 1, 1) if self.path_draw == "sample" else (B, T, 1)
        return torch.rand(shape, device=x.device) < self.dense_path_prob

    # ------------------------------------------------------------------ forward
    def _infer_gates(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router_infer(x)  # (B, T, E)
        if self.router == "topk":
            coef = self.balance_coef if self.training else 0.0
            gates, self._balance = topk_softmax_gates(logits, self.top_k, coef)
            return gates
        assert self.l1 is not None  # every ReLU router has one (__init__)
        gates = self.l1(logits)  # ReLU gates, penalty trained by gradient injection
        if self.training and self.router_infer.offset is not None:
            update_ratio_offset(self.router_infer.offset, gates, self.target_active_ratio,
                                self.offset_rate, self.offset_per)
        return gates

    def _train_gates(self, x: torch.Tensor) -> torch.Tensor:
        assert self.router_train is not None  # DTSI only
        logits = self.router_train(x)  # (B, T, E)
        return F.relu(logits) if self.train_gate == "relu" else F.softplus(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = (self.w1, self.b1, self.w2, self.b2)
        gates = self._infer_gates(x)  # (B, T, E), h_infer's
        if not torch.compiler.is_compiling():  # statistics stay out of exported graphs
            self._record(gates)
        if self.training:
            used = gates
            if self.draws_dtsi_paths:
                g_train = self._train_gates(x)  # (B, T, E)
                self._train_ratio = (g_train > 0).float().mean().detach()
                used = torch.where(self._path_pick(x), g_train, gates)  # (B, T, E)
            return moe_experts_dense(x, used, *experts)
        if self.eval_router == "train" and self.router_train is not None:
            return moe_experts_dense(x, self._train_gates(x), *experts)
        if self.execution == "dense":
            return moe_experts_dense(x, gates, *experts)
        return moe_experts_sparse(x, gates, *experts, kernel=self.sparse_kernel)

    # ------------------------------------------------------------------ statistics
    def reset_statistics(self) -> None:
        """Start a new window for utilisation / dead-expert counts."""
        self._usage: Optional[torch.Tensor] = None  # (T, E) active rows per expert
        self._rows = 0
        self._last_ratio: Optional[torch.Tensor] = None  # (T,)
        self._train_ratio: Optional[torch.Tensor] = None
        self._balance: Optional[torch.Tensor] = None
        self._gate_l1: Optional[torch.Tensor] = None

    def _record(self, gates: torch.Tensor) -> None:
        gates = gates.detach()
        active = (gates > 0).float()  # (B, T, E)
        counts = active.sum(0)  # (T, E)
        self._usage = counts if self._usage is None else self._usage + counts
        self._rows += gates.shape[0]
        self._last_ratio = active.mean(dim=(0, 2))  # (T,)
        self._gate_l1 = gates.sum(-1).mean()  # mean L1 norm of a token's gates

    def expert_utilisation(self) -> torch.Tensor:
        """[T, E]: fraction of rows in the window that activated each expert (h_infer)."""
        if self._usage is None:
            return torch.zeros(self.num_tokens, self.num_experts)
        return (self._usage / max(self._rows, 1)).cpu()

    def statistics(self) -> Dict[str, float]:
        """Routing statistics (aux protocol, modules/aux.py).

        ``active_ratio`` / ``active_ratio_t{t}``: h_infer's active fraction in the last
        forward (all tokens / token t). ``expert_util_min`` / ``expert_util_max`` and
        ``dead_experts`` (experts never active): over the window since
        :meth:`reset_statistics`. ``gate_l1``: mean sum of a token's gates (last
        forward). ``l1_coef`` / ``l1_integral`` (ReLU routers' controller state),
        ``ratio_offset_mean`` (mean of h_infer's ratio offset, when ``offset_rate > 0``),
        ``train_router_active_ratio`` (DTSI, last training forward), ``balance_loss``
        (top-k, last forward).
        """
        if self._last_ratio is None:
            return {}
        ratio = self._last_ratio.cpu()
        util = self.expert_utilisation()
        stats = {"active_ratio": float(ratio.mean())}
        stats.update({f"active_ratio_t{t}": float(r) for t, r in enumerate(ratio)})
        stats.update(expert_util_min=float(util.min()), expert_util_max=float(util.max()),
                     dead_experts=float((util == 0).sum()))
        if self.router_infer.offset is not None:
            stats["ratio_offset_mean"] = float(self.router_infer.offset.mean())
        if self.l1 is not None:
            stats["l1_coef"] = float(self.l1.coef)
            stats["l1_integral"] = float(self.l1.integral)
        if self._gate_l1 is not None:
            stats["gate_l1"] = float(self._gate_l1)
        if self._train_ratio is not None:
            stats["train_router_active_ratio"] = float(self._train_ratio)
        if self._balance is not None:
            stats["balance_loss"] = float(self._balance)
        return stats


def configure_moe_inference(
    model: nn.Module, execution: str = "sparse", router: str = "infer", sparse_kernel: str = "auto"
) -> int:
    """Apply :meth:`PerTokenSparseMoE.configure_inference` to every MoE in ``model``.

    Returns the number of MoE modules configured.

    Example::

        >>> from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder
        >>> cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=2, use_moe=True)
        >>> configure_moe_inference(RankMixerEncoder(cfg), execution="dense")
        2
    """
    mods = [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]
    for m in mods:
        m.configure_inference(execution, router, sparse_kernel)
    return len(mods)


def draw_dtsi_paths(modules: List[PerTokenSparseMoE], x: torch.Tensor) -> None:
    """Give every DTSI MoE in ``modules`` the same per-sample path draw for this forward.

    Args:
        modules: MoE layers of one model (those with ``path_draw="sample"`` take part).
        x: the batch entering the first layer, [B, ...] (sets B and the device).
    """
    shared = [m for m in modules if m.draws_dtsi_paths and m.path_draw == "sample"]
    if shared:
        mask = torch.rand(x.shape[0], device=x.device) < shared[0].dense_path_prob  # (B,)
        for m in shared:
            m.set_path_mask(mask)


def clear_dtsi_paths(modules: List[PerTokenSparseMoE]) -> None:
    """Undo :func:`draw_dtsi_paths`."""
    for m in modules:
        m.set_path_mask(None)


def reset_moe_statistics(model: nn.Module) -> None:
    """Reset the statistics window of every MoE in ``model``."""
    for m in model.modules():
        if isinstance(m, PerTokenSparseMoE):
            m.reset_statistics()
