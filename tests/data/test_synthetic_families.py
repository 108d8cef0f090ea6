"""The two synthetic families of issue 12: determinism, schema, ranges, learnable signal, errors."""

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagCollection

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic_families import (
    CONTEXT_FIELDS,
    ContextRuleData,
    LatentAffinityData,
    oracle_auc,
)
from torchrec_rankmixer.utils.metrics import binary_auc

SMALL = dict(num_users=200, num_items=100)
FAMILIES = [LatentAffinityData, ContextRuleData]


@pytest.mark.parametrize("cls", FAMILIES)
def test_batches_are_a_pure_function_of_seed_and_index(cls) -> None:
    data = cls(seed=4, **SMALL)
    a, b = data.batch(256, 9), cls(seed=4, **SMALL).batch(256, 9)
    assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
    assert torch.equal(a.labels, b.labels)
    other_index = data.batch(256, 10)
    other_seed = cls(seed=5, **SMALL).batch(256, 9)
    assert not torch.equal(a.sparse_features.values(), other_index.sparse_features.values())
    assert not torch.equal(a.labels, other_seed.labels) or not torch.equal(
        a.sparse_features.values(), other_seed.sparse_features.values())


@pytest.mark.parametrize("cls, num_keys", [(LatentAffinityData, 8), (ContextRuleData, 11)])
def test_shapes_keys_and_id_ranges(cls, num_keys: int) -> None:
    data = cls(dense_in_features=2, **SMALL)
    b = data.batch(512, 0)
    assert b.dense_features.shape == (512, 2) and bool((b.dense_features == 1).all())
    assert b.labels.shape == (512,) and set(b.labels.unique().tolist()) <= {0.0, 1.0}
    kjt = b.sparse_features
    assert kjt.keys() == data.feature_names and len(data.feature_names) == num_keys
    assert kjt.stride() == 512 and bool((kjt.lengths() == 1).all())
    for (name, rows), cfg in zip(data.cardinalities.items(), data.table_configs(8)):
        ids = kjt[name].values()
        assert cfg.feature_names == [name] and cfg.num_embeddings == rows and cfg.embedding_dim == 8
        assert int(ids.min()) >= 0 and int(ids.max()) < rows
    if cls is ContextRuleData:
        assert data.feature_names[-3:] == list(CONTEXT_FIELDS)


def test_entity_ids_are_zipf_popular_and_attributes_follow_the_entity() -> None:
    data = LatentAffinityData(attribute_noise=0.0, **SMALL)
    _, ids, _ = data.sample(20000, 0)
    counts = torch.bincount(ids[:, 0, 0], minlength=200).sort(descending=True).values
    assert counts[:10].sum() > 0.3 * 20000  # top 5% of users carry >30% of traffic
    # without noise, a user's age field is the same in every sample
    users, ages = ids[:, 0, 0], ids[:, 1, 0]
    for u in users[:20].tolist():
        assert ages[users == u].unique().numel() == 1
    noisy = LatentAffinityData(attribute_noise=0.5, **SMALL).sample(20000, 0)[1]
    u0 = noisy[:, 0, 0].mode().values
    assert noisy[noisy[:, 0, 0] == u0, 1, 0].unique().numel() > 1


@pytest.mark.parametrize("cls", FAMILIES)
def test_labels_follow_the_planted_logit(cls) -> None:
    data = cls(**SMALL)
    dense, ids, labels = data.sample(20000, 1)
    p = torch.sigmoid(data.true_logits(dense, ids[:, :, 0]))
    assert abs(float(p.mean() - labels.mean())) < 0.02  # labels are Bernoulli(p)
    assert oracle_auc(data, 4096, 3, start=100) > 0.8  # strong, planted signal


def test_context_rules_flip_the_affinity_and_depend_on_context() -> None:
    data = ContextRuleData(**SMALL)
    _, ids, _ = data.sample(4096, 0)
    ids = ids[:, :, 0]
    moved = ids.clone()
    moved[:, 8] = (moved[:, 8] + 12) % 24  # another daypart, same everything else
    moved[:, 9] = (moved[:, 9] + 3) % 7
    ones = torch.ones(4096, 1)
    assert not torch.allclose(data.true_logits(ones, ids), data.true_logits(ones, moved))
    assert bool((data._t["flip"] == -1).any()) and bool((data._t["flip"] == 1).any())
    no_rules = ContextRuleData(rule_strength=0.0, three_way_scale=0.0, flip_fraction=0.0, **SMALL)
    assert torch.allclose(no_rules.true_logits(ones, ids), no_rules.true_logits(ones, moved))


def test_oracle_auc_works_for_the_original_synthetic_data_too() -> None:
    assert 0.8 < oracle_auc(SyntheticClickData(num_embeddings=100), 2048, 2) <= 1.0


@pytest.mark.parametrize("cls", FAMILIES)
def test_planted_signal_is_learnable_by_an_embedding_model(cls) -> None:
    torch.manual_seed(0)
    data = cls(**SMALL)
    ebc = EmbeddingBagCollection(tables=data.table_configs(8))
    head = nn.Sequential(nn.Linear(8 * len(data.feature_names), 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam([*ebc.parameters(), *head.parameters()], lr=1e-2)
    for i in range(150):
        b = data.batch(512, i)
        loss = nn.functional.binary_cross_entropy_with_logits(
            head(ebc(b.sparse_features).values())[:, 0], b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = data.batch(8192, 10_000)
    with torch.no_grad():
        auc = binary_auc(head(ebc(test.sparse_features).values())[:, 0], test.labels)
    assert auc > 0.65  # oracle ~0.87; 0.5 = nothing learnt


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_users=1), "num_users"),
        (dict(num_items=True), "num_items"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(zipf_exponent=-1.0), "zipf_exponent"),
        (dict(attribute_noise=1.5), "attribute_noise"),
        (dict(dense_in_features=0), "dense_in_features"),
        (dict(seed=-1), "seed"),
        (dict(affinity_scale="2"), "affinity_scale"),
    ],
)
@pytest.mark.parametrize("cls", FAMILIES)
def test_bad_arguments_name_the_argument(cls, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_bad_context_and_call_arguments() -> None:
    with pytest.raises(ValueError, match="flip_fraction"):
        ContextRuleData(flip_fraction=2.0)
    with pytest.raises(ValueError, match="rule_strength"):
        ContextRuleData(rule_strength=-1.0)
    data = LatentAffinityData(**SMALL)
    with pytest.raises(ValueError, match="batch_size"):
        data.batch(0, 0)
    with pytest.raises(ValueError, match="index"):
        data.batch(8, -1)
    with pytest.raises(ValueError, match="embedding_dim"):
        data.table_configs(0)
    with pytest.raises(ValueError, match="num_batches"):
        oracle_auc(data, 8, 0)
