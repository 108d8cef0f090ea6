"""Shared small models and batches for the inference tests (not a test module)."""

from typing import Tuple

import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.inference.spec import ModelSpec, TableSpec

DATA = SyntheticClickData(num_sparse_features=4, num_embeddings=50, dense_in_features=3,
                          ids_per_feature=2, seed=3)


def small_spec(dense_in_features: int = 3, **overrides: object) -> ModelSpec:
    """4 features in 3 tables (one shared), 2 ids per bag, D=16, T=3+1."""
    tables = (
        TableSpec("t_a", 8, 50, ("f0", "f1")),
        TableSpec("t_b", 8, 50, ("f2",)),
        TableSpec("t_c", 16, 50, ("f3",)),
    )
    args = dict(
        tables=tables, dense_in_features=dense_in_features,
        dense_arch_layer_sizes=(16, 8) if dense_in_features else (),
        over_arch_layer_sizes=(16, 1),
        rankmixer_config={"d_model": 16, "num_tokens": 4 if dense_in_features else 3,
                          "num_layers": 2, "num_heads": 4 if dense_in_features else 4,
                          "strict_heads": False},
        tokenization="auto",
    )
    args.update(overrides)
    return ModelSpec(**args)  # type: ignore[arg-type]


def small_model(seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_spec(**overrides).build().eval()


def artifact_inputs(batch_size: int, index: int, dense_in_features: int = 3) -> Tuple[torch.Tensor, ...]:
    """(dense, values, lengths) from the synthetic data, in artifact layout."""
    b = DATA.batch(batch_size, index)
    kjt = b.sparse_features
    dense = b.dense_features[:, :dense_in_features]
    return dense, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), batch_size)
