"""Routing statistics of the Sparse-MoE: active ratios, expert utilisation, dead experts.

A module that reports statistics implements ``statistics() -> Dict[str, float]`` and
``reset_statistics()``; the training loop logs :func:`collect_statistics` and starts a new
window with :func:`reset_statistics`.
"""

from typing import Dict, Optional

import torch
from torch import nn


class RoutingStatistics:
    """A window of h_infer's routing decisions (what inference would run).

    Args:
        num_tokens: T.
        num_experts: E.

    Example::

        >>> st = RoutingStatistics(num_tokens=2, num_experts=2)
        >>> st.record(torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
        >>> st.summary()["active_ratio"], st.summary()["dead_experts"]
        (0.25, 3.0)
    """

    def __init__(self, num_tokens: int, num_experts: int) -> None:
        self.num_tokens, self.num_experts = num_tokens, num_experts
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.usage: Optional[torch.Tensor] = None  # (T, E) active rows per expert
        self.rows = 0
        self.last_ratio: Optional[torch.Tensor] = None  # (T,)
        self.gate_l1: Optional[torch.Tensor] = None
        self.train_ratio: Optional[torch.Tensor] = None  # DTSI h_train, last training forward
        self.balance: Optional[torch.Tensor] = None  # top-k load-balancing loss, last forward

    def record(self, gates: torch.Tensor) -> None:
        """Add one forward's h_infer gates [B, T, E] to the window."""
        gates = gates.detach()
        active = (gates > 0).float()  # (B, T, E)
        counts = active.sum(0)  # (T, E)
        self.usage = counts if self.usage is None else self.usage + counts
        self.rows += gates.shape[0]
        self.last_ratio = active.mean(dim=(0, 2))  # (T,)
        self.gate_l1 = gates.sum(-1).mean()  # mean L1 norm of a token's gates

    def utilisation(self) -> torch.Tensor:
        """[T, E]: fraction of the window's rows that activated each expert."""
        if self.usage is None:
            return torch.zeros(self.num_tokens, self.num_experts)
        return (self.usage / max(self.rows, 1)).cpu()

    def summary(self) -> Dict[str, float]:
        """``active_ratio`` / ``active_ratio_t{t}`` (last forward), ``expert_util_min`` /
        ``expert_util_max`` / ``dead_experts`` (window), ``gate_l1``,
        ``train_router_active_ratio`` and ``balance_loss`` when recorded; {} before any
        forward."""
        if self.last_ratio is None:
            return {}
        ratio = self.last_ratio.cpu()
        util = self.utilisation()
        stats = {"active_ratio": float(ratio.mean())}
        stats.update({f"active_ratio_t{t}": float(r) for t, r in enumerate(ratio)})
        stats.update(expert_util_min=float(util.min()), expert_util_max=float(util.max()),
                     dead_experts=float((util == 0).sum()))
        if self.gate_l1 is not None:
            stats["gate_l1"] = float(self.gate_l1)
        if self.train_ratio is not None:
            stats["train_router_active_ratio"] = float(self.train_ratio)
        if self.balance is not None:
            stats["balance_loss"] = float(self.balance)
        return stats


def collect_statistics(model: nn.Module) -> Dict[str, float]:
    """Merged ``statistics()`` of every submodule that has it, keys prefixed by the
    submodule's qualified name.

    Example::

        >>> collect_statistics(nn.Linear(2, 2))
        {}
    """
    stats: Dict[str, float] = {}
    for name, module in model.named_modules():
        fn = getattr(module, "statistics", None)
        if name and callable(fn):
            for key, value in fn().items():
                stats[f"{name}.{key}"] = float(value)
    return stats


def reset_statistics(model: nn.Module) -> None:
    """Start a new statistics window in every submodule that keeps one."""
    for module in model.modules():
        fn = getattr(module, "reset_statistics", None)
        if callable(fn):
            fn()
