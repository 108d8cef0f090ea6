"""models/table_spec.py: TableSpec's validation and its round trip through TorchRec's configs."""

import functools

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from torchrec_rankmixer.models.table_spec import TableSpec


def test_errors_name_the_table_and_the_value():
    with pytest.raises(ValueError, match=r"table 't': num_embeddings \(0\) must be a positive int"):
        TableSpec("t", 8, 0, ("a",))
    with pytest.raises(ValueError, match="feature_names"):
        TableSpec("t", 8, 10, "a")
    with pytest.raises(ValueError, match=r"pooling \('MAX'\)"):
        TableSpec("t", 8, 10, ("a",), pooling="MAX")
    with pytest.raises(ValueError, match=r"init_std \(0.0\)"):
        TableSpec("t", 8, 10, ("a",), init_std=0.0)


def test_config_round_trip_keeps_pooling_and_the_normal_init():
    spec = TableSpec("t", 4, 10, ["a", "b"], pooling="MEAN", init_std=1e-4)
    assert spec.feature_names == ("a", "b")  # lists are stored as tuples (hashable, frozen)
    config = spec.to_config()
    assert (config.pooling, config.feature_names) == (PoolingType.MEAN, ["a", "b"])
    assert TableSpec.from_config(config) == spec
    assert TableSpec.from_config(spec.to_sequence_config()) == TableSpec("t", 4, 10, ("a", "b"), "SUM", 1e-4)
    weight = torch.empty(10, 4)
    config.init_fn(weight)
    assert float(weight.std()) < 1e-3
    # TorchRec's own uniform init (no init_fn) and any other init_fn read back as None
    assert TableSpec.from_config(EmbeddingBagConfig(name="u", embedding_dim=4, num_embeddings=10,
                                                    feature_names=["c"])).init_std is None
    other = functools.partial(torch.nn.init.uniform_, a=-1.0, b=1.0)
    assert TableSpec.from_config(EmbeddingBagConfig(name="u", embedding_dim=4, num_embeddings=10,
                                                    feature_names=["c"], init_fn=other)).init_std is None
