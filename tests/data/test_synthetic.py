import pytest
import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.utils.metrics import binary_auc


def test_deterministic_and_distinct() -> None:
    d = SyntheticClickData(seed=3)
    a, b = d.batch(32, 5), SyntheticClickData(seed=3).batch(32, 5)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.sparse_features.values(), b.sparse_features.values())
    assert not torch.equal(d.batch(32, 6).sparse_features.values(), a.sparse_features.values())
    assert not torch.equal(SyntheticClickData(seed=4).batch(32, 5).sparse_features.values(), a.sparse_features.values())


def test_shapes_ranges_and_multi_hot() -> None:
    d = SyntheticClickData(num_sparse_features=3, num_embeddings=17, ids_per_feature=2, dense_in_features=5)
    b = d.batch(8, 0)
    kjt = b.sparse_features
    assert kjt.keys() == ["f0", "f1", "f2"] and kjt.stride() == 8
    assert kjt.lengths().tolist() == [2] * 24
    assert int(kjt.values().min()) >= 0 and int(kjt.values().max()) < 17
    assert b.dense_features.shape == (8, 5) and set(b.labels.unique().tolist()) <= {0.0, 1.0}


def test_planted_signal_is_learnable_and_crosses_matter() -> None:
    d = SyntheticClickData(seed=0)
    dense, ids, labels = d.sample(20000, 0)
    true = d.true_logits(dense, ids[:, :, 0])
    assert binary_auc(true, labels) > 0.85
    # the planted crosses carry signal beyond first-order effects
    cross = torch.zeros(20000)
    t = d._tables
    for f, g in d.pairs:
        cross += (t["u"][f, ids[:, f, 0]] * t["v"][g, ids[:, g, 0]]).sum(1)
    assert binary_auc(cross, labels) > 0.6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_sparse_features=0), r"num_sparse_features \(0\)"),
        (dict(num_embeddings=-5), r"num_embeddings \(-5\)"),
        (dict(dense_in_features=-1), r"dense_in_features \(-1\)"),
        (dict(num_sparse_features=1, num_interactions=2), r"num_interactions \(2\) needs num_sparse_features >= 2"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyntheticClickData(**kwargs)
    with pytest.raises(ValueError, match=r"batch_size \(0\)"):
        SyntheticClickData().batch(0, 0)


def test_conversion_label_keeps_clicks_and_nests_conversions():
    plain = SyntheticClickData(seed=3).batch(512, 7)
    both = SyntheticClickData(seed=3, conversion_label=True).batch(512, 7)
    assert both.labels.shape == (512, 2)
    assert torch.equal(both.labels[:, 0], plain.labels)  # clicks unchanged
    assert bool((both.labels[:, 1] <= both.labels[:, 0]).all())  # conversion implies click
    rate = both.labels[:, 1].sum() / both.labels[:, 0].sum()
    assert 0.05 < float(rate) < 0.95  # conversions exist and are not every click
