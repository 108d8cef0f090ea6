"""Routers of the per-token Sparse-MoE: the per-token linear router, top-k softmax
routing, the non-gradient ratio offset and the gradient-injection mechanism.

The router penalties (ReLU routing's adaptive L1 in adaptive_l1.py, top-k's
load-balancing loss here) reach training through :func:`inject_gradient`: an identity in
the forward whose backward adds the penalty's gradient to the gates' gradient. Any loop
that calls ``backward()`` on a loss computed from the model's output (ours, TorchRec's
``DLRMTrain``, a ``TrainPipelineSparseDist``) therefore trains the penalty, with no
auxiliary loss to remember. Why this and not an auxiliary loss: docs/moe.md.
"""

from typing import Optional, Tuple

import torch
from torch import nn

from torchrec_rankmixer.config import MOE_OFFSET_PER
from torchrec_rankmixer.modules.per_token_ffn import init_linear_stack
from torchrec_rankmixer.utils.checks import check_choice


class _InjectGrad(torch.autograd.Function):
    """y = x; dL/dx = dL/dy + extra."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, extra: torch.Tensor
    ) -> torch.Tensor:
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
    """One linear router per token: logits[b, t] = x[b, t] @ W[t] + c[t] (+ o[t]).

    Args:
        num_tokens: T.
        d_model: D.
        num_experts: E.
        offset: also add ``o`` [T, E], a buffer moved by :func:`update_ratio_offset`
            (the non-gradient ratio control of docs/moe.md), not by the optimiser.
        device: where to allocate.

    Shapes:
        x: [B, T, D] -> logits [B, T, E]. weight [T, D, E], bias [T, E], offset [T, E].

    Example::

        >>> TokenRouter(3, 8, 4)(torch.randn(2, 3, 8)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(
        self, num_tokens: int, d_model: int, num_experts: int, offset: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tokens, d_model, num_experts, device=device))
        self.bias = nn.Parameter(torch.empty(num_tokens, num_experts, device=device))
        self.offset: Optional[torch.Tensor]
        if offset:
            self.register_buffer("offset", torch.zeros(num_tokens, num_experts, device=device))
        else:
            self.offset = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight.is_meta:
            return
        init_linear_stack(self.weight, self.bias)
        nn.init.zeros_(self.bias)  # start with about half the experts active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias if self.offset is None else self.bias + self.offset  # (T, E)
        logits = torch.baddbmm(bias.unsqueeze(1), x.transpose(0, 1), self.weight)  # (T, B, E)
        return logits.transpose(0, 1)  # (B, T, E)


def topk_softmax_gates(
    logits: torch.Tensor, k: int, balance_coef: float
) -> Tuple[torch.Tensor, torch.Tensor]:
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
    # detached rather than under no_grad: a grad-mode switch does not survive torch.export
    routed = torch.zeros_like(probs).detach().scatter_(-1, top_i, 1.0)  # (B, T, E) one-hots
    frac = routed.mean(0) / k  # (T, E): f
    balance = E * (frac * probs.detach().mean(0)).sum(-1).mean()
    if balance_coef > 0 and probs.requires_grad:  # coef first: eval (0) traces under FX
        probs = inject_gradient(probs, balance_coef * E * frac / (B * T))  # dLB/dp
        top_p = probs.gather(-1, top_i)
    gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
    return gates, balance


@torch.no_grad()
def update_ratio_offset(
    offset: torch.Tensor, gates: torch.Tensor, target: float, rate: float, per: str = "expert"
) -> None:
    """One sign step of the non-gradient ratio control: ``o += rate * sign(target - r)``.

    The auxiliary-loss-free balancing rule applied to the active ratio: ``r`` is the
    batch's fraction of non-zero gates per (token, expert) (``per="expert"``: every
    expert of token t is held near the target usage, which also revives dead experts)
    or per token (``per="token"``: one offset per token, the same for its E experts).

    Args:
        offset: [T, E] buffer, updated in place.
        gates: [B, T, E] gates of the batch.
        target: target active fraction, in (0, 1].
        rate: step size in logit units, >= 0.
        per: ``"expert"`` or ``"token"``.

    Example::

        >>> o = torch.zeros(1, 2)
        >>> update_ratio_offset(o, torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]), 0.5, 0.25)
        >>> o.tolist()  # expert 0 always on (down), expert 1 never (up)
        [[-0.25, 0.25]]
    """
    check_choice("per", per, MOE_OFFSET_PER)
    active = (gates > 0).float()  # (B, T, E)
    ratio = active.mean(0) if per == "expert" else active.mean(dim=(0, 2)).unsqueeze(-1)  # (T, E|1)
    offset.add_(rate * torch.sign(target - ratio))
