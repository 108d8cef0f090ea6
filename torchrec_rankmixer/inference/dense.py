"""Dense-part transforms for inference: traceable kernels and per-token FFNs unfused into
per-token ``nn.Linear`` pairs (which inference/int8_linear.py quantizes).

The dense part is everything outside ``sparse_arch``: DenseArch, tokenizer projections,
the RankMixer encoder and the OverArch.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.ops.kernels import Kernel
from torchrec_rankmixer.ops.per_token_swiglu import swiglu


def per_token_linears(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.ModuleList:
    """One ``nn.Linear`` per token of a stack: Linear t computes ``x @ weight[t] + bias[t]``
    (``weight`` [T, in, out], ``bias`` [T, out] or None for bias-free Linears).

    Example::

        >>> fcs = per_token_linears(torch.randn(3, 4, 5), None)
        >>> len(fcs), tuple(fcs[0].weight.shape), fcs[0].bias
        (3, (5, 4), None)
    """
    linears = nn.ModuleList()
    with torch.no_grad():
        for t in range(weight.shape[0]):
            fc = nn.Linear(weight.shape[1], weight.shape[2], bias=bias is not None, dtype=weight.dtype)
            fc.weight.copy_(weight[t].t())
            if bias is not None:
                fc.bias.copy_(bias[t])
            linears.append(fc)
    return linears


class _PerTokenLinearPairs(nn.Module):
    """T pairs of ``nn.Linear`` (so dynamic int8 can swap them): token t computes
    ``fc_out[t](act(fc_in[t](x[:, t])))``, ``act`` SwiGLU (``gated``) or GELU.
    Shapes: x [B, T, D] -> [B, T, D]."""

    def __init__(self, fc_in: nn.ModuleList, fc_out: nn.ModuleList, gated: bool) -> None:
        super().__init__()
        self.fc_in, self.fc_out, self.gated = fc_in, fc_out, gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for t, (fc_in, fc_out) in enumerate(zip(self.fc_in, self.fc_out)):
            h = fc_in(x[:, t])
            outs.append(fc_out(swiglu(h) if self.gated else F.gelu(h)))  # (B, D)
        return torch.stack(outs, dim=1)  # (B, T, D)


class PerTokenLinearFFN(_PerTokenLinearPairs):
    """A :class:`PerTokenFFN` as T pairs of ``nn.Linear`` ``fc_in[t]``, ``fc_out[t]`` (so
    dynamic int8 can swap them). Same function as the fused module: token t computes
    ``GELU(x[:, t] @ w1[t] + b1[t]) @ w2[t] + b2[t]``.

    Args:
        ffn: the trained fused module (weights w1 [T, D, kD], w2 [T, kD, D]).

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> ffn = PerTokenFFN(num_tokens=3, d_model=4, ffn_mult=2)
        >>> x = torch.randn(5, 3, 4)
        >>> torch.allclose(PerTokenLinearFFN(ffn)(x), ffn(x), atol=1e-6)
        True
    """

    def __init__(self, ffn: PerTokenFFN) -> None:
        super().__init__(per_token_linears(ffn.w1, ffn.b1), per_token_linears(ffn.w2, ffn.b2), gated=False)


class PerTokenLinearSwiGLU(_PerTokenLinearPairs):
    """A :class:`PerTokenSwiGLU` as T pairs of bias-free ``nn.Linear``: token t computes
    ``swiglu(x[:, t] @ w_in[t]) @ w_out[t]``, the gate and up projections in one Linear
    ``fc_in[t]`` of width 2h (weights w_in [T, D, 2h], w_out [T, h, D]); otherwise as
    :class:`PerTokenLinearFFN`.

    Example::

        >>> ffn = PerTokenSwiGLU(num_tokens=3, d_model=4, hidden_dim=8, down_init_scale=1.0)
        >>> unfused, x = PerTokenLinearSwiGLU(ffn), torch.randn(5, 3, 4)
        >>> torch.allclose(unfused(x), ffn(x), atol=1e-6), unfused.fc_in[0].out_features
        (True, 16)
    """

    def __init__(self, ffn: PerTokenSwiGLU) -> None:
        super().__init__(per_token_linears(ffn.w_in, None), per_token_linears(ffn.w_out, None), gated=True)


# fused per-token FFN type -> its nn.Linear twin
UNFUSED = {PerTokenFFN: PerTokenLinearFFN, PerTokenSwiGLU: PerTokenLinearSwiGLU}


def pin_traceable_kernels(module: nn.Module) -> None:
    """Replace every ``kernel="auto"`` (chosen per call from the batch size; ops/kernels.py)
    and :class:`PerTokenSparseMoE`'s ``sparse_kernel="auto"`` by ``"batched"``.

    An exported graph has a symbolic batch size, so a per-call choice cannot be kept;
    ``"batched"`` is the kernel ``choose_kernel`` picks for inference batches below 1024
    and the one every trace uses, and the sparse-MoE kernel ``"auto"`` picks on CPU
    (artifacts are CPU artifacts) and the one torch.export can trace.

    Example::

        >>> ffn = PerTokenFFN(2, 4, 2, kernel="auto")
        >>> pin_traceable_kernels(ffn); ffn.kernel
        'batched'
    """
    for m in module.modules():
        if getattr(m, "kernel", None) == Kernel.AUTO:
            m.kernel = Kernel.BATCHED.value
        if isinstance(m, PerTokenSparseMoE) and m.sparse_kernel == Kernel.AUTO:
            m.sparse_kernel = Kernel.BATCHED.value


def unfuse_per_token_ffns(module: nn.Module) -> int:
    """Swap every :class:`PerTokenFFN` / :class:`PerTokenSwiGLU` inside ``module`` for
    its :class:`PerTokenLinearFFN` / :class:`PerTokenLinearSwiGLU` twin (``UNFUSED``).

    Returns the number of modules swapped.

    Example::

        >>> unfuse_per_token_ffns(nn.Sequential(PerTokenFFN(2, 4, 2), PerTokenSwiGLU(2, 4, 8)))
        2
    """
    swapped = 0
    for name, child in list(module.named_children()):
        if type(child) in UNFUSED:
            setattr(module, name, UNFUSED[type(child)](child))
            swapped += 1
        else:
            swapped += unfuse_per_token_ffns(child)
    return swapped
