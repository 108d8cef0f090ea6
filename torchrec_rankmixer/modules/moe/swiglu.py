"""TokenMixer-Large's Sparse-MoE: per-token pSwiGLU experts, routed, plus a shared expert.

Token t owns E routed SwiGLU experts (:class:`SwiGLUTokenExperts`) and one shared SwiGLU
expert that every row runs. The routing is :class:`PerTokenSparseMoE`'s (routers,
top-k / ReLU / DTSI gates, statistics, inference switch, calibration), with these experts
in place of its GELU ones; :class:`PerTokenSwiGLUMoE` adds the shared expert:

    y[b, t] = gate_scale * sum_e g[b, t, e] * f_te(x[b, t]) + f_t,shared(x[b, t])

The paper's router is top-k softmax (``moe_router="topk"``); the ReLU routers (``"relu"``,
``"dtsi"``) work with it unchanged. Sparse inference runs only the routed experts whose
gate is non-zero, plus the shared one.
"""

from typing import Tuple

import torch
from torch import nn

from torchrec_rankmixer.config import TML_DOWN_INIT_SCALE, RankMixerConfig
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.modules.per_token_swiglu import PerTokenSwiGLU, SwiGLUFFNStack
from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.ops.moe import resolve_sparse_kernel
from torchrec_rankmixer.ops.moe_swiglu import swiglu_experts, swiglu_experts_sparse_resolved
from torchrec_rankmixer.ops.per_token_ffn import _fx_or_script
from torchrec_rankmixer.utils.checks import check_float, check_positive_ints

# A leaf for FX symbolic tracing (its shapes depend on the data); TorchScript compiles the
# leaf itself, since the kernel it gets is already resolved.
torch.fx.wrap("swiglu_experts_sparse_resolved")


class SwiGLUTokenExperts(SwiGLUFFNStack):
    """E SwiGLU experts per token, without biases: expert (t, e) is
    ``f_te(x) = (SiLU(x Wg[t,e]) * (x Wu[t,e])) Wd[t,e]``; the forward returns the gated
    sum ``y[b, t] = sum_e g[b, t, e] * f_te(x[b, t])`` (ops/moe_swiglu.py).

    Args:
        num_tokens: T.
        d_model: D.
        num_experts: E.
        expert_hidden: h, each expert's hidden width.
        down_init_scale: factor on nn.Linear's init of each down projection, >= 0.
        device: where to allocate (``"meta"`` works).

    Shapes:
        x [B, T, D], gates [B, T, E] -> [B, T, D]. w_in [T, E, D, 2h] (gate, then up),
        w_out [T, E, h, D].

    Example::

        >>> ex = SwiGLUTokenExperts(num_tokens=3, d_model=8, num_experts=4, expert_hidden=16)
        >>> x, g = torch.randn(2, 3, 8), torch.relu(torch.randn(2, 3, 4))
        >>> torch.allclose(ex.sparse(x, g, "auto"), ex(x, g, sparse=False), atol=1e-6)
        True
    """

    def __init__(
        self, num_tokens: int, d_model: int, num_experts: int, expert_hidden: int,
        down_init_scale: float = TML_DOWN_INIT_SCALE, device: torch.device | str | None = None,
    ) -> None:
        check_positive_ints({"num_tokens": num_tokens, "d_model": d_model,
                             "num_experts": num_experts, "expert_hidden": expert_hidden})
        super().__init__((num_tokens, num_experts), d_model, expert_hidden, down_init_scale, device)
        self.num_tokens, self.num_experts, self.expert_hidden = num_tokens, num_experts, expert_hidden

    @property
    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(w_in, w_out)."""
        return self.w_in, self.w_out

    def forward(
        self, x: torch.Tensor, gates: torch.Tensor, sparse: bool, kernel: str = "auto"
    ) -> torch.Tensor:
        """Gated sum of the experts; ``sparse`` computes only the active triples."""
        kernel = check_kernel("kernel", kernel)
        return swiglu_experts(x, gates, self.w_in, self.w_out, sparse, kernel)  # (B, T, D)

    def sparse(self, x: torch.Tensor, gates: torch.Tensor, kernel: str) -> torch.Tensor:
        """The sparse inference path, as one FX leaf call with the kernel resolved here
        (under FX tracing or TorchScript ``"auto"`` is ``"batched"``: the input is symbolic)."""
        if _fx_or_script():
            chosen = "batched" if check_kernel("kernel", kernel) == "auto" else kernel
        else:
            chosen = resolve_sparse_kernel(x, kernel, self.expert_hidden)
        return swiglu_experts_sparse_resolved(x, gates, self.w_in, self.w_out, chosen)  # (B, T, D)


class PerTokenSwiGLUMoE(nn.Module):
    """TokenMixer-Large's Sparse-MoE FFN, a drop-in for :class:`PerTokenSwiGLU`:
    ``y = gate_scale * routed(x) + shared(x)``.

    Args:
        routed: the routed part, a :class:`PerTokenSparseMoE` over
            :class:`SwiGLUTokenExperts` (its routers, gates, statistics and inference
            switch are the ones documented in docs/moe.md).
        shared: the shared expert of every token, a :class:`PerTokenSwiGLU` of the
            same T and D.
        gate_scale: factor on the routed experts' gated sum, > 0 (the paper's gate value
            scaling).

    Shapes:
        x: [B, T, D] -> [B, T, D].

    Example::

        >>> from torchrec_rankmixer import RankMixerConfig
        >>> cfg = RankMixerConfig(d_model=8, num_tokens=4, num_layers=1, block="tokenmixer_large",
        ...                       use_moe=True, moe_router="topk", moe_num_experts=4,
        ...                       moe_target_active_ratio=0.5)
        >>> moe = PerTokenSwiGLUMoE.from_config(cfg, num_tokens=4, width=8)
        >>> x = torch.randn(3, 4, 8)
        >>> moe(x).shape
        torch.Size([3, 4, 8])
        >>> _ = moe.eval()
        >>> torch.allclose(moe(x), moe.routed(x) + moe.shared(x))
        True
    """

    def __init__(self, routed: PerTokenSparseMoE, shared: PerTokenSwiGLU, gate_scale: float = 1.0) -> None:
        super().__init__()
        if (routed.num_tokens, routed.d_model) != (shared.num_tokens, shared.d_model):
            raise ValueError(
                f"the shared expert's (T, D) ({shared.num_tokens}, {shared.d_model}) must equal "
                f"the routed experts' ({routed.num_tokens}, {routed.d_model})"
            )
        check_float("gate_scale", gate_scale, 0.0, float("inf"), "()")
        self.routed, self.shared, self.gate_scale = routed, shared, float(gate_scale)

    @classmethod
    def from_config(
        cls, config: RankMixerConfig, num_tokens: int, width: int, device: torch.device | str | None = None
    ) -> "PerTokenSwiGLUMoE":
        """The Sparse-MoE of a TokenMixer-Large block on ``num_tokens`` tokens of ``width``
        (the mixing-space FFN runs on H heads of width T*D/H): E routed experts and one
        shared expert, each of width ``config.moe_hidden_for(width)``."""
        hidden = config.moe_hidden_for(width)
        experts = SwiGLUTokenExperts(num_tokens, width, config.moe_num_experts, hidden,
                                     config.tml_down_init_scale, device=device)
        shared = PerTokenSwiGLU(num_tokens, width, hidden, config.tml_down_init_scale,
                                kernel=config.kernel, device=device)
        routed = PerTokenSparseMoE.from_config(config, device, experts=experts)
        return cls(routed, shared, config.moe_gate_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate_scale * self.routed(x) + self.shared(x)  # (B, T, D)
