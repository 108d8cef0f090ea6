"""Routers of the per-token Sparse-MoE and the gradient-injection mechanism.

The router penalties (ReLU routing's adaptive L1, top-k's load-balancing loss) reach
training through :func:`inject_gradient`: an identity in the forward whose backward adds
the penalty's gradient to the gates' gradient. Any loop that calls ``backward()`` on a
loss computed from the model's output (ours, TorchRec's ``DLRMTrain``, a
``TrainPipelineSparseDist``) therefore trains the penalty, with no auxiliary loss to
remember. Why this and not an auxiliary loss: docs/moe.md.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.modules.per_token_ffn import _init_linear_stack

L1_COEF_MIN = 1e-6
L1_COEF_MAX = 1e4


class _InjectGrad(torch.autograd.Function):
    """y = x; dL/dx = dL/dy + extra."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(extra)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        (extra,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad + extra, None


def inject_gradient(x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """Identity on ``x`` whose backward adds ``extra`` (broadcast to x) to x's gradient.

    Adding ``extra = dP/dx`` trains a penalty P as if ``P`` had been added to the loss.

    Args:
        x: any tensor that requires grad.
        extra: gradient to add, broadcastable to ``x`` (detached).

    Example::

        >>> x = torch.ones(3, requires_grad=True)
        >>> (2 * inject_gradient(x, torch.tensor(0.5))).sum().backward()
        >>> x.grad.tolist()
        [2.5, 2.5, 2.5]
    """
    return _InjectGrad.apply(x, extra.detach().to(x.dtype))


class TokenRouter(nn.Module):
    """One linear router per token: logits[b, t] = x[b, t] @ W[t] + c[t].

    Args:
        num_tokens: T.
        d_model: D.
        num_experts: E.
        device: where to allocate.

    Shapes:
        x: [B, T, D] -> logits [B, T, E]. weight [T, D, E], bias [T, E].

    Example::

        >>> TokenRouter(3, 8, 4)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, num_tokens: int, d_model: int, num_experts: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tokens, d_model, num_experts, device=device))
        self.bias = nn.Parameter(torch.empty(num_tokens, num_experts, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        _init_linear_stack(self.weight, self.bias, self.weight.shape[1])
        nn.init.zeros_(self.bias)  # start with about half the experts active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight)  # (T, B, E)
        return logits.transpose(0, 1)  # (B, T, E)


class AdaptiveL1(nn.Module):
    """ReLU gates with the adaptive L1 penalty and its controller (docs/moe.md).

    ``forward(logits)`` returns ``g = ReLU(logits)``. In training it injects the
    gradient of the penalty ``P = coef * sum_{t,e} mean_b g[b, t, e]`` (``coef / B``
    per active gate, the scale of a per-sample mean loss). The coefficient is signed:
    ``coef > 0`` is the L1 shrinkage of the paper; ``coef < 0`` (only reached when the
    task alone makes the gates sparser than the target) is an activation bonus applied
    straight-through to *every* logit, so experts whose logits went negative can come
    back (ReLU passes no gradient there).

    Controller, after each training forward, with r the fraction of non-zero gates in
    the batch and d = +1 if r > target else -1: ``|coef|`` is multiplied by ``step``
    when ``sign(coef) == d`` and divided by ``step`` otherwise; when ``|coef|`` falls
    below 1e-6 the sign flips to d at magnitude 1e-6; ``|coef| <= 1e4``. This is ReMoE's
    multiplicative sign controller extended through zero. ``coef`` is a buffer: it is
    checkpointed with the model and broadcast by DDP.

    Args:
        target: target fraction of active gates, in (0, 1].
        init: initial coefficient, > 0.
        step: multiplicative step, > 1.

    Shapes:
        logits [B, T, E] -> gates [B, T, E].

    Example::

        >>> l1 = AdaptiveL1(target=0.25, init=1.0, step=2.0)
        >>> h = torch.ones(4, 2, 3, requires_grad=True)  # all active: ratio 1 > 0.25
        >>> l1(h).sum().backward()
        >>> h.grad[0, 0, 0].item(), l1.coef.item()  # 1 + coef/B with the old coef; coef doubled
        (1.25, 2.0)
    """

    def __init__(self, target: float, init: float, step: float) -> None:
        super().__init__()
        self.target, self.step = float(target), float(step)
        self.register_buffer("coef", torch.tensor(float(init)))

    def penalty(self, gates: torch.Tensor) -> torch.Tensor:
        """The penalty value for gates [B, T, E] (for logging)."""
        return self.coef * gates.detach().sum() / gates.shape[0]

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and logits.requires_grad):
            return F.relu(logits)
        coef = self.coef.to(logits.dtype)
        per_gate = coef / logits.shape[0]
        # L1 (coef > 0): gradient on active gates only; bonus (coef < 0): on every logit.
        extra = torch.where((logits > 0) | (coef < 0), per_gate, torch.zeros_like(per_gate))
        gates = F.relu(inject_gradient(logits, extra))  # extra lands after ReLU's mask
        self._update(gates)
        return gates

    @torch.no_grad()
    def _update(self, gates: torch.Tensor) -> None:
        ratio = (gates > 0).float().mean()
        direction = torch.where(ratio > self.target, 1.0, -1.0)
        sign = torch.where(self.coef >= 0, 1.0, -1.0)
        mag = self.coef.abs() * torch.where(sign == direction, self.step, 1.0 / self.step)
        flip = mag < L1_COEF_MIN
        sign = torch.where(flip, direction, sign)
        mag = torch.where(flip, torch.full_like(mag, L1_COEF_MIN), mag).clamp(max=L1_COEF_MAX)
        self.coef.copy_(sign * mag)


def topk_softmax_gates(logits: torch.Tensor, k: int, balance_coef: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Vanilla top-k softmax routing with the Switch/GShard load-balancing loss.

    ``p = softmax(logits)``; each (sample, token) keeps its k largest ``p`` renormalised
    to sum 1, the other gates are 0. Load balance (per token t, then averaged over T):
    ``LB = E * sum_e f[t, e] * P[t, e]`` with f the fraction of routing slots sent to e
    and P the mean probability; ``balance_coef * LB`` is trained by gradient injection
    on ``p`` when ``p`` requires grad.

    Args:
        logits: [B, T, E].
        k: experts per (sample, token), 1 <= k <= E.
        balance_coef: weight of the load-balancing loss (0 disables it).

    Returns:
        gates [B, T, E] (k non-zero per row), and the load-balancing loss value (detached).

    Example::

        >>> gates, lb = topk_softmax_gates(torch.randn(4, 3, 8), k=2, balance_coef=0.01)
        >>> (gates > 0).sum(-1).unique().tolist(), torch.allclose(gates.sum(-1), torch.ones(4, 3))
        ([2], True)
    """
    B, T, E = logits.shape
    probs = torch.softmax(logits, dim=-1)  # (B, T, E)
    top_p, top_i = probs.topk(k, dim=-1)  # (B, T, k)
    with torch.no_grad():
        routed = torch.zeros_like(probs).scatter_(-1, top_i, 1.0)  # (B, T, E) one-hots
        frac = routed.mean(0) / k  # (T, E): f
        balance = E * (frac * probs.mean(0)).sum(-1).mean()
    if probs.requires_grad and balance_coef > 0:
        probs = inject_gradient(probs, balance_coef * E * frac / (B * T))  # dLB/dp
        top_p = probs.gather(-1, top_i)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    return gates, balance


