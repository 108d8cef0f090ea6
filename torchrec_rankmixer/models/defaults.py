"""The encoder config ``DLRM_RankMixer`` builds when it is given none: the one default rule.

T from the token plan, D the smallest multiple of T that is >= 64, L = 2, and the block
chosen on the quality suite (docs/quality.md, decision 1) with that block's own defaults.
"""

import math
from typing import Any, Dict, Mapping, Optional, Sequence

from torchrec_rankmixer.config import RANKMIXER, TOKENMIXER_LARGE, RankMixerConfig

DEFAULT_MIN_D_MODEL = 64
# The block type DLRM_RankMixer uses without a config, chosen on the whole quality suite
# (docs/quality.md): TokenMixer-Large at k = 1 ranks above the RankMixer block on the three
# synthetic sets (every seed), level on Frappe, at 0.74x its encoder FLOPs.
DEFAULT_BLOCK = TOKENMIXER_LARGE
# Per block type, the settings a default config takes unless the caller sets them. The
# RankMixer block: pre-LN without a final norm (the output-path LayerNorm of the paper's
# post-LN block is what made it rank below a plain MLP); the paper's block is
# ``{"block": "rankmixer", "ln_style": "post"}``.
BLOCK_DEFAULTS: Dict[str, Dict[str, Any]] = {
    TOKENMIXER_LARGE: {"ffn_mult": 1},
    RANKMIXER: {"ln_style": "pre", "final_norm": False},
}
DEFAULT_MAX_SPARSE_TOKENS = 7
# How DLRM_RankMixer initialises its head (modules/deep.py INITS): xavier-normal OverArch
# weights, zero biases there and in the interaction projections, chosen on the quality
# suite (docs/quality.md, decision 8); ``"torch"`` is TorchRec DLRM_DCN's init.
DEFAULT_OVER_ARCH_INIT = "xavier"


def default_num_sparse_tokens(
    num_features: int, feature_groups: Optional[Mapping[str, Sequence[str]]], tokenization: Optional[str]
) -> int:
    """T_s when the config does not set it: one token per group, else
    ``DEFAULT_MAX_SPARSE_TOKENS`` (at most one per feature unless the mode is ``"split"``)."""
    if feature_groups:
        return len(feature_groups)
    if tokenization == "split":
        return DEFAULT_MAX_SPARSE_TOKENS
    return min(num_features, DEFAULT_MAX_SPARSE_TOKENS)


def default_config(
    num_features: int,
    num_dense_tokens: int,
    feature_groups: Optional[Mapping[str, Sequence[str]]] = None,
    tokenization: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> RankMixerConfig:
    """The encoder config the model uses when none is given (the one default rule).

    T = ``overrides["num_tokens"]`` or :func:`default_num_sparse_tokens` + dense tokens;
    D = ``overrides["d_model"]`` or the smallest multiple of T that is >= 64; L = 2; the
    block ``overrides["block"]`` or ``DEFAULT_BLOCK`` (TokenMixer-Large, chosen on the
    quality suite: docs/quality.md) with its ``BLOCK_DEFAULTS`` (TokenMixer-Large: k = 1;
    the RankMixer block: pre-LN without a final norm; ``overrides={"block": "rankmixer",
    "ln_style": "post"}`` is the paper's block); every other field is ``overrides``' or
    :class:`RankMixerConfig`'s default, which is the paper's (H = T, k = 4, mean pooling).

    Args:
        num_features: sparse features the tokenizer sees (EBC + pooled sequences).
        num_dense_tokens: dense tokens (0 without dense input).
        feature_groups: the semantic groups, if any.
        tokenization: the tokenization mode, if given.
        overrides: RankMixerConfig fields to set (``rankmixer-train``'s ``model.rankmixer``).

    Example::

        >>> cfg = default_config(num_features=10, num_dense_tokens=1)
        >>> cfg.num_tokens, cfg.d_model, cfg.num_layers
        (8, 64, 2)
        >>> cfg.block, cfg.ffn_mult
        ('tokenmixer_large', 1)
        >>> paper = default_config(10, 1, overrides={"block": "rankmixer", "ln_style": "post"})
        >>> paper.ffn_mult, paper.ln_style
        (4, 'post')
        >>> default_config(10, 1, overrides={"num_tokens": 3}).d_model
        66
    """
    given = dict(overrides or {})
    block = given.get("block", DEFAULT_BLOCK)
    values: Dict[str, Any] = {"num_layers": 2, "block": block, **BLOCK_DEFAULTS.get(block, {}), **given}
    if "num_tokens" not in values:
        values["num_tokens"] = default_num_sparse_tokens(num_features, feature_groups, tokenization) + num_dense_tokens
    T = values["num_tokens"]
    if "d_model" not in values and isinstance(T, int) and T > 0:
        values["d_model"] = T * math.ceil(DEFAULT_MIN_D_MODEL / T)
    known = set(RankMixerConfig.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown RankMixerConfig field(s) {unknown}; known: {sorted(known)}")
    return RankMixerConfig(**values)
