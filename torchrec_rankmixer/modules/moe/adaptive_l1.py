"""The adaptive L1 penalty on ReLU gates and its PI controller (RankMixer 3.4, docs/moe.md).

ReLU routing makes an expert inactive where its gate is 0; the L1 penalty on the gates
pushes the active fraction down to a target, and a PI controller sets the penalty's
coefficient from the measured fraction. The penalty is trained by gradient injection
(no auxiliary loss; see router.py).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

INTEGRAL_MAX = 50.0


class _ScaledL1(torch.autograd.Function):
    """y = logits; backward adds ``coef * s`` to the gradient of every active logit
    (``coef > 0``) or of every logit (``coef < 0``), s = RMS of the incoming (task)
    gradient over the entries where it is non-zero."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, coef: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(logits, coef)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        logits, coef = ctx.saved_tensors  # type: ignore[attr-defined]
        live = (grad != 0).sum().clamp(min=1)
        scale = (grad.pow(2).sum() / live).sqrt()  # RMS of the task gradient
        where = (logits > 0) | (coef < 0)
        return grad + (coef * scale) * where, None


class AdaptiveL1(nn.Module):
    """ReLU gates with the adaptive L1 penalty and its PI controller (docs/moe.md).

    ``forward(logits)`` returns ``g = ReLU(logits)``. In training, the backward adds to
    every active gate the gradient ``coef * s``, s the RMS of the task gradient reaching
    the gates: the subgradient of the L1 penalty ``coef * s * sum(g)``. Expressing the
    coefficient in units of the task gradient makes it scale-free: the same ``coef``
    means the same balance whatever the loss scale, batch size, gradient accumulation or
    AMP loss scaling. ``coef < 0`` (reached only when the task alone makes the gates
    sparser than the target) is an activation bonus applied straight-through to every
    logit, so experts whose logits went negative can come back.

    Controller (PI), after each training forward, with r the fraction of non-zero
    gates in the batch and ``e = clamp((r - target) / target, -1, 1)``:
    ``I <- clamp(I + ki * e, -50, 50)``; ``coef <- kp * e + I``. ``coef`` and ``I`` are
    buffers: checkpointed with the model and broadcast by DDP.

    Args:
        target: target fraction of active gates, in (0, 1].
        kp: proportional gain, >= 0.
        ki: integral gain, > 0.

    Shapes:
        logits [B, T, E] -> gates [B, T, E].

    Example::

        >>> l1 = AdaptiveL1(target=0.25, kp=2.0, ki=0.1)
        >>> h = torch.ones(4, 2, 3, requires_grad=True)  # all active: ratio 1 > 0.25
        >>> g = l1(h)
        >>> round(l1.coef.item(), 3)  # e = 1: coef = kp * 1 + ki * 1
        2.1
    """

    def __init__(self, target: float, kp: float, ki: float) -> None:
        super().__init__()
        self.target, self.kp, self.ki = float(target), float(kp), float(ki)
        self.register_buffer("coef", torch.zeros(()))
        self.register_buffer("integral", torch.zeros(()))

    # Eager under torch.compile: the controller updates ``coef`` in place after
    # _ScaledL1 saved its pre-update copy, and AOTAutograd saves the buffer itself instead
    # of that copy, so a compiled backward would apply the updated coefficient.
    @torch.compiler.disable
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and logits.requires_grad):
            return F.relu(logits)
        gates = F.relu(_ScaledL1.apply(logits, self.coef.to(logits.dtype).clone()))
        self._update(gates)
        return gates

    @torch.no_grad()
    def _update(self, gates: torch.Tensor) -> None:
        ratio = (gates > 0).float().mean()
        err = ((ratio - self.target) / self.target).clamp(-1.0, 1.0)
        self.integral.add_(self.ki * err).clamp_(-INTEGRAL_MAX, INTEGRAL_MAX)
        self.coef.copy_(self.kp * err + self.integral)
