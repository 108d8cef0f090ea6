"""The default encoder config (models/defaults.py): the block chosen on the quality suite
and each block type's own defaults."""

import pytest
import torch
from torchrec import EmbeddingBagCollection

from torchrec_rankmixer import DLRM_RankMixer, RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.models.defaults import DEFAULT_MAX_SPARSE_TOKENS, default_config

DATA = SyntheticClickData(num_sparse_features=5, num_embeddings=50, dense_in_features=4)


def _ebc() -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=DATA.table_configs(8), device=torch.device("cpu"))


def test_default_block_is_tokenmixer_large_at_k1_and_block_defaults_follow_the_block() -> None:
    from torchrec_rankmixer.modules.block import RankMixerBlock
    from torchrec_rankmixer.modules.tokenmixer_large import TokenMixerLargeBlock

    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1])
    assert (model.config.block, model.config.ffn_mult, model.config.num_layers) == ("tokenmixer_large", 1, 2)
    assert all(isinstance(b, TokenMixerLargeBlock) for b in model.encoder.blocks)
    # the RankMixer block gets its own defaults (pre-LN, no final norm, k = 4), not TML's k = 1
    pre = default_config(5, 1, overrides={"block": "rankmixer"})
    assert (pre.ln_style, pre.final_norm, pre.ffn_mult) == ("pre", False, 4)
    paper = default_config(5, 1, overrides={"block": "rankmixer", "ln_style": "post"})
    assert (paper.ln_style, paper.ffn_mult) == ("post", 4)
    assert isinstance(RankMixerEncoder(paper).blocks[0], RankMixerBlock)
    assert default_config(5, 1, overrides={"ffn_mult": 3}).ffn_mult == 3  # the caller wins
    # a config given to the model is used as is: no block defaults are applied to it
    given = RankMixerConfig(d_model=18, num_tokens=6, num_layers=1)
    assert DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], rankmixer_config=given).config == given
    with pytest.raises(ValueError, match="block"):
        default_config(5, 1, overrides={"block": "transformer"})


def test_token_count_and_width_rule() -> None:
    """One token per feature up to DEFAULT_MAX_SPARSE_TOKENS, plus the dense tokens; D the
    smallest multiple of T that is >= 64; the caller's T and D win."""
    assert default_config(5, 1).num_tokens == 6
    many = default_config(20, 1)
    assert many.num_tokens == DEFAULT_MAX_SPARSE_TOKENS + 1 and many.d_model % many.num_tokens == 0
    assert default_config(5, 0, feature_groups={"a": ["x"], "b": ["y"]}).num_tokens == 2
    assert (default_config(5, 1, overrides={"num_tokens": 4, "d_model": 12}).d_model) == 12
    with pytest.raises(ValueError, match=r"unknown RankMixerConfig field\(s\) \['dmodel'\]"):
        default_config(5, 1, overrides={"dmodel": 64})
