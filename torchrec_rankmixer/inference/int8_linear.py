"""Dynamic int8 Linear layers written in plain aten ops, for the inference dense part.

Weights are quantized once, symmetric per output channel (7-bit codes, exact on every
x86 CPU: :data:`WEIGHT_QMAX`); activations per row on every call (8-bit); the product runs as an int8 x int8 -> int32 GEMM (``torch._int_mm``: VNNI on
AVX-512 CPUs) and is rescaled to fp32. Being plain aten ops, the layers trace through
``torch.export``, compile under AOTInductor (the split artifact's dense part) and script
under TorchScript, unlike ``torch.ao``'s packed dynamic Linear, which only scripts.

Two kernels behind one ``kernel=`` argument, tested against each other: ``"int_mm"``
(fast) and ``"reference"`` (the same integer arithmetic written out in int64).
"""

from typing import Optional, Tuple

import torch
from torch import nn

from torchrec_rankmixer.inference.dense import unfuse_per_token_ffns
from torchrec_rankmixer.modules.interaction import LowRankCrossNet
from torchrec_rankmixer.utils.checks import check_choice

KERNELS: Tuple[str, ...] = ("int_mm", "reference")
# Weight codes stay within [-63, 63] (7 bits): without VNNI (AVX2, AVX-512 before Cascade
# Lake) oneDNN's int8 GEMM shifts activations to uint8 and sums pairs of uint8 x int8
# products in int16, which saturates for weights beyond +-64, silently. Activations keep
# the full [-127, 127]. (fbgemm's x86 dynamic quantization restricts a range for the same
# reason: ``reduce_range``.)
WEIGHT_QMAX = 63


def quantize_rows(x: torch.Tensor, qmax: int = 127) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``x ~= q * scale``, codes in [-qmax, qmax].

    Shapes: x [M, K] float -> (q [M, K] int8, scale [M, 1] float32). A row of zeros gets
    codes 0 (its scale is clamped away from 0).

    Example::

        >>> q, s = quantize_rows(torch.tensor([[1.0, -0.5], [0.0, 0.0]]))
        >>> q.tolist(), round(float(s[0, 0]) * 127, 6)
        ([[127, -64], [0, 0]], 1.0)
    """
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12).float() / qmax  # (M, 1)
    q = torch.round(x.float() / scale).clamp(-qmax, qmax).to(torch.int8)  # (M, K)
    return q, scale


def int8_matmul(q: torch.Tensor, w_t: torch.Tensor, kernel: str = "int_mm") -> torch.Tensor:
    """Exact int8 x int8 -> int32 product ``q @ w_t``.

    Args:
        q: [M, K] int8 activations.
        w_t: [K, N] int8 weights, codes within +-:data:`WEIGHT_QMAX` (beyond it
            ``"int_mm"`` is inexact on CPUs without VNNI).
        kernel: ``"int_mm"`` (``torch._int_mm``) or ``"reference"`` (int64 matmul).

    Example::

        >>> q, w = torch.ones(2, 3, dtype=torch.int8), torch.full((3, 4), 2, dtype=torch.int8)
        >>> int8_matmul(q, w).tolist()[0], torch.equal(int8_matmul(q, w), int8_matmul(q, w, "reference"))
        ([6, 6, 6, 6], True)
    """
    if kernel == "int_mm":
        return torch._int_mm(q, w_t)  # (M, N) int32
    return (q.to(torch.int64) @ w_t.to(torch.int64)).to(torch.int32)  # (M, N)


class Int8DynamicLinear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel, codes within
    +-:data:`WEIGHT_QMAX`) and int8 activations (per row, quantized on every call),
    accumulated in int32 and rescaled to fp32.

    Args:
        weight: the float weight [N, K] (``nn.Linear.weight``).
        bias: the float bias [N] or None.
        kernel: one of :data:`KERNELS`.

    Shapes:
        x [..., K] -> [..., N], fp32.

    Example::

        >>> fc = nn.Linear(16, 4)
        >>> q8 = Int8DynamicLinear.from_float(fc)
        >>> x = torch.randn(5, 16)
        >>> bool((q8(x) - fc(x)).abs().max() < 0.05), q8.weight_t.dtype
        (True, torch.int8)
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], kernel: str = "int_mm") -> None:
        super().__init__()
        check_choice("kernel", kernel, KERNELS)
        self.kernel = kernel
        q, scale = quantize_rows(weight.detach(), WEIGHT_QMAX)  # per output channel: (N, K), (N, 1)
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self.register_buffer("weight_t", q.t().contiguous())  # (K, N) int8
        self.register_buffer("weight_scale", scale.flatten().contiguous())  # (N,)
        self.bias: Optional[torch.Tensor]
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, linear: nn.Linear, kernel: str = "int_mm") -> "Int8DynamicLinear":
        """The int8 twin of a float ``nn.Linear``."""
        return cls(linear.weight, linear.bias, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = quantize_rows(x.flatten(0, -2))  # (M, K), (M, 1); M = prod(leading dims)
        y = int8_matmul(q, self.weight_t, self.kernel).to(torch.float32) * (scale * self.weight_scale)  # (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.unflatten(0, x.shape[:-1])  # (..., N)


class _CrossLayer(nn.Module):
    def __init__(self, v: Int8DynamicLinear, w: Int8DynamicLinear) -> None:
        super().__init__()
        self.v, self.w = v, w

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.w(self.v(x)) + x  # (B, W)


class Int8DynamicCrossNet(nn.Module):
    """A :class:`~torchrec_rankmixer.modules.interaction.LowRankCrossNet` whose per-layer
    ``V_l`` (W -> r) and ``W_l`` (r -> W, with the bias) are :class:`Int8DynamicLinear`:
    ``x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l``.

    Shapes: x0 [B, W] -> [B, W].

    Example::

        >>> cross = LowRankCrossNet(8, num_layers=2, low_rank=4)
        >>> x = torch.randn(3, 8)
        >>> bool((Int8DynamicCrossNet(cross)(x) - cross(x)).abs().max() < 0.1)
        True
    """

    def __init__(self, cross: LowRankCrossNet, kernel: str = "int_mm") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            _CrossLayer(Int8DynamicLinear(cross.V_kernels[i], None, kernel),
                        Int8DynamicLinear(cross.W_kernels[i], cross.bias[i], kernel))
            for i in range(cross.num_layers)
        )

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


def quantize_dense_int8(module: nn.Module, kernel: str = "int_mm") -> nn.Module:
    """The dynamic int8 version of ``module``: every ``nn.Linear`` and ``LowRankCrossNet``
    in it (``module`` itself included) becomes its int8 twin, swapped in place; per-token
    FFNs (GELU and pSwiGLU) are unfused into per-token ``nn.Linear`` pairs first
    (inference/dense.py), so their matmuls quantize too. The tokenizer's projection and
    Sparse-MoE experts (stacked weights) stay float.

    Returns the swapped module (a new one when ``module`` itself is swapped).

    Example::

        >>> m = quantize_dense_int8(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
        >>> type(m[0]).__name__, type(quantize_dense_int8(nn.Linear(4, 2))).__name__
        ('Int8DynamicLinear', 'Int8DynamicLinear')
    """
    unfuse_per_token_ffns(module)  # once, for the whole tree
    return _swap(module, kernel)


def _swap(module: nn.Module, kernel: str) -> nn.Module:
    if isinstance(module, nn.Linear):
        return Int8DynamicLinear.from_float(module, kernel)
    if isinstance(module, LowRankCrossNet):
        return Int8DynamicCrossNet(module, kernel)
    for name, child in list(module.named_children()):
        setattr(module, name, _swap(child, kernel))
    return module
