"""The paper's RankMixer ablations as config changes (Tables 2 and 3 of the paper)."""

from typing import Dict

from torchrec_rankmixer import RankMixerConfig

# variant -> RankMixerConfig overrides; "full" is the paper's architecture.
VARIANTS: Dict[str, Dict[str, object]] = {
    "full": {},
    "no_residual": {"residual": False},
    "no_mixing": {"token_mixer": "none"},
    "no_layernorm": {"layer_norm": False},
    "shared_ffn": {"ffn_type": "shared"},
    "all_concat_mlp": {"token_mixer": "all_concat_mlp"},
    "all_share": {"token_mixer": "all_share"},
    "self_attention": {"token_mixer": "self_attention"},
}

# The paper's AUC deltas for RankMixer-100M (Table 2: components; Table 3: routing).
PAPER_DELTA_PCT: Dict[str, float] = {
    "no_residual": -0.07,
    "no_mixing": -0.50,
    "no_layernorm": -0.05,
    "shared_ffn": -0.31,
    "all_concat_mlp": -0.18,
    "all_share": -0.25,
    "self_attention": -0.03,
}


def rankmixer_variant(variant: str, **sizes: object) -> RankMixerConfig:
    """A RankMixerConfig of the given sizes with one ablation applied."""
    if variant not in VARIANTS:
        raise ValueError(f"variant ({variant!r}) must be one of {sorted(VARIANTS)}")
    return RankMixerConfig(**sizes).with_updates(**VARIANTS[variant])  # type: ignore[arg-type]
