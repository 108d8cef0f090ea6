"""torchrec_rankmixer.data.synthetic_sequences: schema, determinism, the planted ``hit``."""

import pytest
import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic_sequences import SyntheticSequenceData


def _data(**kwargs: object) -> SyntheticSequenceData:
    return SyntheticSequenceData(
        base=SyntheticClickData(num_sparse_features=2, num_embeddings=30, dense_in_features=3),
        num_items=40, num_categories=8, max_history=9, recent_window=3, **kwargs,  # type: ignore[arg-type]
    )


def test_schema_and_determinism() -> None:
    data = _data()
    b = data.batch(64, 5)
    kjt = b.sparse_features
    assert kjt.keys() == ["f0", "f1", "item", "hist_item"] and kjt.stride() == 64
    jts = kjt.to_dict()
    assert (jts["item"].lengths() == 1).all()
    hist_len = jts["hist_item"].lengths()
    assert int(hist_len.min()) == 0 and int(hist_len.max()) <= 9  # empty histories occur
    assert int(jts["hist_item"].values().max()) < 40 and int(jts["item"].values().max()) < 40
    again = data.batch(64, 5)
    assert torch.equal(kjt.values(), again.sparse_features.values())
    assert torch.equal(b.labels, again.labels)
    assert not torch.equal(b.labels, data.batch(64, 6).labels)
    # the base features are the base generator's, unchanged (composition)
    base = data.base.batch(64, 5).sparse_features
    assert torch.equal(jts["f0"].values(), base.to_dict()["f0"].values())
    cfgs = data.sequence_feature_configs(max_len=3, pooling="target")
    assert [c.name for c in cfgs] == ["item", "hist_item"] and cfgs[1].candidate == "item"
    assert data.sequence_table_configs(8)[0].feature_names == ["item", "hist_item"]


def test_hit_means_candidate_category_in_the_recent_window() -> None:
    data = _data()
    s = data.sample(256, 0)
    offsets = torch.cumsum(s["history_lengths"], 0) - s["history_lengths"]
    for b in range(256):
        n, start = int(s["history_lengths"][b]), int(offsets[b])
        recent = s["history_values"][start : start + n][-3:]  # most recent = end of the list
        expected = bool((data.category[recent] == data.category[s["candidate"][b]]).any())
        assert bool(s["hit"][b]) == expected
    assert 0.3 < float(s["hit"].mean()) < 0.9  # both outcomes are common


def test_labels_depend_on_hit() -> None:
    s = _data(effect=6.0).sample(4000, 1)
    hit, labels = s["hit"] > 0, s["labels"]
    assert float(labels[hit].mean()) - float(labels[~hit].mean()) > 0.3
    flat = _data(effect=0.0).sample(4000, 1)
    assert abs(float(flat["labels"][flat["hit"] > 0].mean()) - float(flat["labels"][flat["hit"] == 0].mean())) < 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_items=0), r"num_items \(0\)"),
        (dict(num_categories=0), r"num_categories \(0\)"),
        (dict(max_history=0), r"max_history \(0\)"),
        (dict(recent_window=-1), r"recent_window \(-1\)"),
        (dict(num_items=10, num_categories=3), r"num_items \(10\) must be a multiple"),
        (dict(match_rate=1.5), r"match_rate \(1.5\)"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    defaults = dict(num_items=40, num_categories=8, max_history=9, recent_window=3)
    with pytest.raises(ValueError, match=message):
        SyntheticSequenceData(**{**defaults, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        _data().batch(0, 0)
