"""RankMixer configuration: one validated dataclass for the dense core.

Shape legend used across the package: B batch, T tokens, D width (``d_model``),
H heads, k FFN multiple (``ffn_mult``), E experts, L layers.
"""

from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

from torchrec_rankmixer.ops.kernels import check_kernel
from torchrec_rankmixer.utils.checks import (
    check_bool,
    check_choice,
    check_float,
    check_non_negative_int,
    check_positive_int,
)

LN_STYLES: Tuple[str, ...] = ("post", "pre")
POOLINGS: Tuple[str, ...] = ("mean", "flatten")
FFN_TYPES: Tuple[str, ...] = ("per_token", "shared")
TOKEN_MIXERS: Tuple[str, ...] = (
    "multihead", "none", "self_attention", "all_concat_mlp", "all_share"
)
# Token2FFN routing ablations (paper Table 3): they replace the (mixer, FFN) pair.
ROUTING_ABLATIONS: Tuple[str, ...] = ("all_concat_mlp", "all_share")
MOE_ROUTERS: Tuple[str, ...] = ("dtsi", "relu", "topk")
MOE_OFFSET_PER: Tuple[str, ...] = ("expert", "token")
MOE_TRAIN_GATES: Tuple[str, ...] = ("relu", "softplus")
MOE_PATH_DRAWS: Tuple[str, ...] = ("sample", "token")
# Block types of the encoder: RankMixer's (Eq. 1) or TokenMixer-Large's (modules/tokenmixer_large.py).
RANKMIXER = "rankmixer"
TOKENMIXER_LARGE = "tokenmixer_large"
BLOCKS: Tuple[str, ...] = (RANKMIXER, TOKENMIXER_LARGE)
TML_DOWN_INIT_SCALE = 0.01  # TokenMixer-Large's small init of each pSwiGLU down projection


@dataclass(frozen=True)
class RankMixerConfig:
    """Settings of the RankMixer dense core (tokens in, pooled vector out).

    Args:
        d_model: token width D.
        num_tokens: number of tokens T entering the first block.
        num_layers: number of RankMixer blocks L.
        num_heads: token-mixing heads H; ``None`` means H = T (the paper's setting).
        ffn_mult: FFN hidden multiple k; each token's FFN is D -> kD -> D.
        ln_style: ``"post"`` (paper: ``LN(f(x) + x)``) or ``"pre"`` (``x + f(LN(x))``).
        dropout: dropout probability on the FFN output, in [0, 1).
        final_norm: apply a LayerNorm after the last block (useful with ``"pre"``).
        pooling: ``"mean"`` over tokens -> [B, D] (paper) or ``"flatten"`` -> [B, T*D].
        strict_heads: the paper's strict mode; requires num_heads == num_tokens.
        ffn_type: ``"per_token"`` (paper) or ``"shared"`` (one FFN for all tokens, ablation).
        token_mixer: ``"multihead"`` (paper), ``"none"`` (ablation),
            ``"self_attention"`` (ablation; H attention heads, with parameters), or the
            routing ablations ``"all_concat_mlp"`` / ``"all_share"`` (paper Table 3; see
            modules/token_mixing_ablations.py; they replace the per-token FFN too).
        residual: keep the skip connections (ablation switch).
        layer_norm: keep the LayerNorms (ablation switch).
        kernel: how every op of the encoder runs (token mixing, per-token FFN,
            Sparse-MoE experts; ops/kernels.py): ``"auto"`` (the measured choice, see
            docs/benchmarks.md), ``"reference"`` (readable loops), ``"batched"`` or
            ``"grouped_mm"``. Execution only: it shapes no parameter.
        use_moe: replace each token's FFN by a Sparse-MoE of E experts
            (:class:`~torchrec_rankmixer.modules.moe.PerTokenSparseMoE`, docs/moe.md).
        moe_router: ``"dtsi"`` (paper: ReLU routing, dense-training / sparse-inference
            with routers h_train and h_infer), ``"relu"`` (one ReLU router, ablation) or
            ``"topk"`` (vanilla top-k softmax + load-balancing loss, baseline).
        moe_num_experts: E experts per token.
        moe_expert_hidden: hidden width of each expert; ``None`` picks
            ``round(kD / (E * target))`` so the active FLOPs match the dense FFN's.
        moe_target_active_ratio: target mean fraction of active experts, in (0, 1];
            top-k uses ``k = round(target * E)``.
        moe_l1_kp: proportional gain of the L1 controller (ReLU routers), >= 0.
        moe_l1_ki: integral gain of the L1 controller, > 0 (docs/moe.md).
        moe_balance_coef: load-balancing loss weight (top-k), >= 0.
        moe_dense_path_prob: DTSI: probability that a training sample is routed by
            h_train's gates instead of h_infer's, in [0, 1).
        moe_path_draw: DTSI: ``"sample"`` (one draw per sample, shared by every MoE
            layer of the encoder, so each sample trains exactly one of the two models
            that are evaluated) or ``"token"`` (one draw per (sample, token) and layer).
        block: ``"rankmixer"`` (the paper's block, Eq. 1) or ``"tokenmixer_large"``
            (TokenMixer-Large: mixing and reverting, pre-RMSNorm, pSwiGLU FFNs;
            :class:`~torchrec_rankmixer.modules.tokenmixer_large.TokenMixerLargeBlock`;
            always pre-RMSNorm, so ``ln_style`` does not apply and ``final_norm`` is an
            RMSNorm). The ``tml_*`` fields and ``moe_gate_scale`` apply to it only.
        tml_inter_residual_every: TokenMixer-Large inter-layer residuals: after every
            n-th block (not the last) the stream of n blocks earlier is added; 0: off.
        tml_down_init_scale: each pSwiGLU down projection starts at nn.Linear's init
            times this factor (>= 0), so every block starts near the identity.
        tml_global_token: TokenMixer-Large: append a global token (a Linear of all T
            tokens) that every block mixes with the others; dropped before pooling.
        moe_gate_scale: TokenMixer-Large Sparse-MoE: the routed experts' gated sum is
            scaled by this factor before the shared expert is added (> 0).

    Example::

        >>> cfg = RankMixerConfig(d_model=64, num_tokens=8, num_layers=2)
        >>> cfg.heads
        8
        >>> cfg.param_count() == 2 * 4 * 2 * 8 * 64 ** 2
        True
    """

    d_model: int
    num_tokens: int
    num_layers: int
    num_heads: Optional[int] = None
    ffn_mult: int = 4
    ln_style: str = "post"
    dropout: float = 0.0
    final_norm: bool = False
    pooling: str = "mean"
    strict_heads: bool = True
    ffn_type: str = "per_token"
    token_mixer: str = "multihead"
    residual: bool = True
    layer_norm: bool = True
    kernel: str = "auto"
    use_moe: bool = False
    moe_router: str = "dtsi"
    moe_num_experts: int = 8
    moe_expert_hidden: Optional[int] = None
    moe_target_active_ratio: float = 0.25
    moe_l1_kp: float = 0.5
    moe_l1_ki: float = 0.01
    moe_balance_coef: float = 0.01
    moe_dense_path_prob: float = 0.5
    moe_offset_rate: float = 0.01
    moe_offset_per: str = "expert"
    moe_train_gate: str = "softplus"
    moe_path_draw: str = "sample"
    block: str = RANKMIXER
    tml_inter_residual_every: int = 2
    tml_down_init_scale: float = TML_DOWN_INIT_SCALE
    tml_global_token: bool = False
    moe_gate_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("d_model", "num_tokens", "num_layers", "ffn_mult"):
            check_positive_int(name, getattr(self, name))
        if self.num_heads is not None:
            check_positive_int("num_heads", self.num_heads)
        for name in ("final_norm", "strict_heads", "residual", "layer_norm"):
            check_bool(name, getattr(self, name))
        check_choice("ln_style", self.ln_style, LN_STYLES)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("ffn_type", self.ffn_type, FFN_TYPES)
        check_choice("token_mixer", self.token_mixer, TOKEN_MIXERS)
        check_kernel("kernel", self.kernel)
        check_float("dropout", self.dropout, 0.0, 1.0, "[)")
        heads = self.heads
        if self.d_model % heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({heads})"
            )
        if self.strict_heads and self.token_mixer == "multihead" and heads != self.num_tokens:
            raise ValueError(
                f"num_heads ({heads}) must equal num_tokens ({self.num_tokens}) in the "
                "paper's strict mode; pass strict_heads=False for general H"
            )
        self._check_moe()
        self._check_block()

    def _check_block(self) -> None:
        check_choice("block", self.block, BLOCKS)
        check_non_negative_int("tml_inter_residual_every", self.tml_inter_residual_every)
        check_float("tml_down_init_scale", self.tml_down_init_scale, 0.0, float("inf"), "[)")
        check_bool("tml_global_token", self.tml_global_token)
        check_float("moe_gate_scale", self.moe_gate_scale, 0.0, float("inf"), "()")
        if self.block != TOKENMIXER_LARGE:
            if self.tml_global_token:
                raise ValueError(
                    f"tml_global_token=True needs block='{TOKENMIXER_LARGE}' (got {self.block!r})"
                )
            return
        if self.ffn_type != "per_token" or self.token_mixer != "multihead":
            raise ValueError(
                f"block='{TOKENMIXER_LARGE}' mixes and reverts with per-token FFNs: it needs "
                f"ffn_type='per_token' and token_mixer='multihead' (got {self.ffn_type!r}, "
                f"{self.token_mixer!r})"
            )

    def _check_moe(self) -> None:
        check_bool("use_moe", self.use_moe)
        check_choice("moe_router", self.moe_router, MOE_ROUTERS)
        check_positive_int("moe_num_experts", self.moe_num_experts)
        if self.moe_expert_hidden is not None:
            check_positive_int("moe_expert_hidden", self.moe_expert_hidden)
        check_float("moe_target_active_ratio", self.moe_target_active_ratio, 0.0, 1.0, "(]")
        check_float("moe_l1_kp", self.moe_l1_kp, 0.0, float("inf"), "[)")
        check_float("moe_l1_ki", self.moe_l1_ki, 0.0, float("inf"), "()")
        check_float("moe_balance_coef", self.moe_balance_coef, 0.0, float("inf"), "[)")
        check_float("moe_dense_path_prob", self.moe_dense_path_prob, 0.0, 1.0, "[)")
        check_float("moe_offset_rate", self.moe_offset_rate, 0.0, float("inf"), "[)")
        check_choice("moe_offset_per", self.moe_offset_per, MOE_OFFSET_PER)
        check_choice("moe_train_gate", self.moe_train_gate, MOE_TRAIN_GATES)
        check_choice("moe_path_draw", self.moe_path_draw, MOE_PATH_DRAWS)
        if self.use_moe and self.ffn_type != "per_token":
            raise ValueError(f"use_moe=True needs ffn_type='per_token' (got {self.ffn_type!r})")
        if self.use_moe and self.token_mixer in ROUTING_ABLATIONS:
            raise ValueError(
                f"use_moe=True cannot be combined with token_mixer={self.token_mixer!r} "
                "(that ablation replaces the per-token FFN)"
            )
        if self.use_moe and self.moe_router == "topk" and self.moe_top_k < 1:
            raise ValueError(
                f"moe_target_active_ratio ({self.moe_target_active_ratio}) * moe_num_experts "
                f"({self.moe_num_experts}) rounds to 0 experts for top-k routing"
            )

    # ------------------------------------------------------------------ derived
    @property
    def heads(self) -> int:
        """H: ``num_heads`` or, when unset, ``num_tokens``."""
        return self.num_tokens if self.num_heads is None else self.num_heads

    @property
    def hidden_dim(self) -> int:
        """kD: hidden width of each token's FFN."""
        return self.ffn_mult * self.d_model

    @property
    def moe_hidden(self) -> int:
        """Hidden width of each MoE expert (``moe_expert_hidden`` or the FLOP-matched default)."""
        return self.moe_hidden_for(self.d_model)

    def moe_hidden_for(self, width: int) -> int:
        """Expert width of a MoE on tokens of ``width``: ``moe_expert_hidden``, or the width
        whose active experts match the dense FFN's k*width hidden units: target*E experts
        (+1, the shared expert of the TokenMixer-Large block)."""
        if self.moe_expert_hidden is not None:
            return self.moe_expert_hidden
        active = self.moe_num_experts * self.moe_target_active_ratio + self._shared_experts
        return max(1, round(self.ffn_mult * width / active))

    @property
    def _shared_experts(self) -> int:
        return 1 if self.block == TOKENMIXER_LARGE else 0

    @property
    def moe_top_k(self) -> int:
        """k of the top-k baseline: ``round(target * E)``."""
        return round(self.moe_target_active_ratio * self.moe_num_experts)

    @property
    def output_dim(self) -> int:
        """Width of the pooled encoder output: D for mean pooling, T*D for flatten."""
        return self.d_model if self.pooling == "mean" else self.num_tokens * self.d_model

    def with_updates(self, **changes: object) -> "RankMixerConfig":
        """A validated copy with some fields changed (unknown names raise ValueError)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown RankMixerConfig field(s) {unknown}")
        return replace(self, **changes)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ sizes
    def _moe_active_experts(self, active: bool) -> float:
        """Experts per token counted: E (total) or target * E (active at inference)."""
        E = self.moe_num_experts
        return self.moe_target_active_ratio * E if active else float(E)

    def param_count(self, exact: bool = False, active: bool = False) -> int:
        """Encoder parameters.

        ``exact=False`` gives the paper's approximation ``2kLTD²`` (FFN weights only).
        ``exact=True`` counts every parameter of :class:`RankMixerEncoder` built from
        this config: FFN weights and biases, LayerNorms, attention (if used).

        With ``use_moe`` the FFN term counts experts and routers (docs/moe.md):
        ``active=False`` gives the total (``2·E·h·LTD`` approximately, h the expert
        width), ``active=True`` the parameters one inference touches at the target
        ratio (``target·E`` experts and only the h_infer router), rounded down.
        ``active`` is ignored without ``use_moe``. TokenMixer-Large: see
        :meth:`_tml_size` (the same ``exact`` / ``active`` meanings).
        """
        if self.block == TOKENMIXER_LARGE:
            return self._tml_size(exact, active, flops=False)
        L, T, D, kD = self.num_layers, self.num_tokens, self.d_model, self.hidden_dim
        if self.use_moe:
            E, h, n = self.moe_num_experts, self.moe_hidden, self._moe_active_experts(active)
            routers = 1 if active or self.moe_router != "dtsi" else 2
            if not exact:
                return int(2 * n * h * L * T * D)
            ffn = T * (n * (D * h + h + h * D + D) + routers * (D * E + E))
        elif not exact:
            return 2 * kD * L * T * D
        else:
            ffn_copies = T if self.ffn_type == "per_token" else 1
            ffn = ffn_copies * (D * kD + kD + kD * D + D)
            if self.token_mixer == "all_concat_mlp":
                ffn = 2 * T * D * kD + kD + T * D
            elif self.token_mixer == "all_share":
                ffn = T * (T * D * kD + kD + kD * D + D)
        norms = 2 * (2 * D) if self.layer_norm else 0
        attn = (4 * D * D + 4 * D) if self.token_mixer == "self_attention" else 0
        final = 2 * D if self.final_norm else 0
        return int(L * (ffn + norms + attn) + final)

    def flops_per_sample(self, exact: bool = False, training: bool = False) -> int:
        """Forward FLOPs of the encoder for one sample.

        ``exact=False`` gives the paper's ``4kLTD²``. ``exact=True`` counts every matrix
        multiply (2 FLOPs per multiply-add), as ``torch.utils.flop_counter`` does; it
        equals the approximation for the paper's architecture (and for
        ``"all_concat_mlp"``), adds the attention products for ``"self_attention"`` and
        the T-times wider first layer for ``"all_share"``. Element-wise work (bias, GELU,
        LayerNorm, mixing permutation) is not counted.

        With ``use_moe``: by default the sparse-inference cost at exactly the target
        ratio (``target·E`` experts per token; ``exact=True`` adds the h_infer router
        matmul). ``training=True`` gives the dense-training cost: all E experts, every
        router and the gate-weighted bias matmul. The measured ratio varies per batch; see docs/moe.md.
        TokenMixer-Large: see :meth:`_tml_size`.
        """
        if self.block == TOKENMIXER_LARGE:
            return self._tml_size(exact, not training, flops=True)
        L, T, D, kD = self.num_layers, self.num_tokens, self.d_model, self.hidden_dim
        if self.use_moe:
            E, h, n = self.moe_num_experts, self.moe_hidden, self._moe_active_experts(not training)
            if not exact:
                return int(4 * n * h * L * T * D)
            routers = 2 if training and self.moe_router == "dtsi" else 1
            gated_bias = 2 * T * E * D if training else 0  # the dense path's g @ b2 bmm
            ffn = 2 * 2 * T * D * n * h + routers * 2 * T * D * E + gated_bias
        elif not exact:
            return 4 * kD * L * T * D
        else:
            ffn = 2 * 2 * T * D * kD
            if self.token_mixer == "all_share":
                ffn = 2 * T * (T * D * kD + kD * D)  # each FFN reads all T*D inputs
        attn = 0
        if self.token_mixer == "self_attention":
            attn = 2 * 4 * T * D * D + 2 * 2 * T * T * D  # projections + QK^T and AV
        return int(L * (ffn + attn))

    def _tml_size(self, exact: bool, active: bool, flops: bool) -> int:
        """Parameters (``flops=False``) or forward FLOPs per sample of a TokenMixer-Large
        encoder (docs/configuration.md, "Sizes"). Each block holds two pSwiGLU FFNs
        (3 weights of w*h per token, no biases): H heads of width W = T'D/H after mixing
        and T' tokens of width D after reverting (T' = T + the global token)."""
        L, D, T = self.num_layers, self.d_model, self.num_tokens
        tokens = T + int(self.tml_global_token)
        H = self.heads
        layer = 0.0
        for n, w in ((H, tokens * D // H), (tokens, D)):  # (tokens, width) of each FFN
            if not self.use_moe:
                layer += 3 * n * w * self.ffn_mult * w
                continue
            E, h = self.moe_num_experts, self.moe_hidden_for(w)
            layer += 3 * n * w * h * (self._moe_active_experts(active) + self._shared_experts)
            if exact:
                routers = 1 if active or self.moe_router != "dtsi" else 2
                layer += routers * n * (w * E + (0 if flops else E))
        if flops:
            layer *= 2  # every weight is one multiply-add per sample
        if exact and not flops and self.layer_norm:
            layer += tokens * D // H + D  # the two RMSNorm scales
        total = L * layer
        if exact and self.tml_global_token:
            total += (2 * T * D * D) if flops else (T * D * D + D)
        if exact and not flops and self.final_norm:
            total += D
        return int(total)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides: object) -> "RankMixerConfig":
        """The paper's sizes: ``"100M"`` (D=768, T=16, L=2) and ``"1B"`` (D=1536, T=32, L=2).

        Both use k=4, which gives 2kLTD² = 151M and 1.21B FFN parameters.
        """
        presets = {
            "100M": dict(d_model=768, num_tokens=16, num_layers=2, ffn_mult=4),
            "1B": dict(d_model=1536, num_tokens=32, num_layers=2, ffn_mult=4),
        }
        if name not in presets:
            raise ValueError(f"preset ({name!r}) must be one of {sorted(presets)}")
        base = cls(**presets[name])  # type: ignore[arg-type]
        return base.with_updates(**overrides) if overrides else base
