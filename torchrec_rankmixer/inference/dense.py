"""Dense-part transforms for inference: one-time weight cast and dynamic int8 Linear.

The dense part is everything outside ``sparse_arch``: DenseArch, tokenizer projections,
the RankMixer encoder and the OverArch. Weights are cast once here (an autocast region
would re-cast every weight on every call).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_ffn import PerTokenFFN
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU
from torchrec_rankmixer.ops.kernels import Kernel
from torchrec_rankmixer.ops.per_token_swiglu import swiglu


class PerTokenLinearFFN(nn.Module):
    """A :class:`PerTokenFFN` as T pairs of ``nn.Linear`` (so dynamic int8 can swap them).

    Same function as the fused module: token t computes
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
        super().__init__()
        self.fc1 = nn.ModuleList()
        self.fc2 = nn.ModuleList()
        with torch.no_grad():
            for t in range(ffn.num_tokens):
                fc1 = nn.Linear(ffn.d_model, ffn.hidden_dim, dtype=ffn.w1.dtype)
                fc1.weight.copy_(ffn.w1[t].t())
                fc1.bias.copy_(ffn.b1[t])
                fc2 = nn.Linear(ffn.hidden_dim, ffn.d_model, dtype=ffn.w2.dtype)
                fc2.weight.copy_(ffn.w2[t].t())
                fc2.bias.copy_(ffn.b2[t])
                self.fc1.append(fc1)
                self.fc2.append(fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for t, (fc1, fc2) in enumerate(zip(self.fc1, self.fc2)):
            outs.append(fc2(F.gelu(fc1(x[:, t]))))  # (B, D)
        return torch.stack(outs, dim=1)  # (B, T, D)


class PerTokenLinearSwiGLU(nn.Module):
    """A :class:`PerTokenSwiGLU` as T pairs of bias-free ``nn.Linear`` (so dynamic int8
    can swap them): token t computes ``swiglu(x[:, t] @ w_in[t]) @ w_out[t]``, the gate
    and up projections in one Linear of width 2h.

    Args:
        ffn: the trained fused module (weights w_in [T, D, 2h], w_out [T, h, D]).

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> ffn = PerTokenSwiGLU(num_tokens=3, d_model=4, hidden_dim=8, down_init_scale=1.0)
        >>> x = torch.randn(5, 3, 4)
        >>> torch.allclose(PerTokenLinearSwiGLU(ffn)(x), ffn(x), atol=1e-6)
        True
    """

    def __init__(self, ffn: PerTokenSwiGLU) -> None:
        super().__init__()
        self.fc_in = nn.ModuleList()
        self.fc_out = nn.ModuleList()
        with torch.no_grad():
            for t in range(ffn.num_tokens):
                fc_in = nn.Linear(ffn.d_model, 2 * ffn.hidden_dim, bias=False, dtype=ffn.w_in.dtype)
                fc_in.weight.copy_(ffn.w_in[t].t())
                fc_out = nn.Linear(ffn.hidden_dim, ffn.d_model, bias=False, dtype=ffn.w_out.dtype)
                fc_out.weight.copy_(ffn.w_out[t].t())
                self.fc_in.append(fc_in)
                self.fc_out.append(fc_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for t, (fc_in, fc_out) in enumerate(zip(self.fc_in, self.fc_out)):
            outs.append(fc_out(swiglu(fc_in(x[:, t]))))  # (B, D)
        return torch.stack(outs, dim=1)  # (B, T, D)


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


def quantize_dense_dynamic_int8(module: nn.Module) -> nn.Module:
    """Dynamic int8 ``nn.Linear`` (weights int8 per tensor, activations quantized per
    call; CPU only). Per-token FFNs (GELU and SwiGLU) are unfused first so their
    matmuls quantize too.

    Example::

        >>> m = quantize_dense_dynamic_int8(nn.Sequential(nn.Linear(4, 4)))
        >>> type(m[0]).__module__
        'torch.ao.nn.quantized.dynamic.modules.linear'
    """
    unfuse_per_token_ffns(module)
    return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
