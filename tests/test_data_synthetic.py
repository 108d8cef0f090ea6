"""The synthetic data's optional conversion label (ESMM)."""

import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData


def test_conversion_label_keeps_clicks_and_nests_conversions():
    plain = SyntheticClickData(seed=3).batch(512, 7)
    both = SyntheticClickData(seed=3, conversion_label=True).batch(512, 7)
    assert both.labels.shape == (512, 2)
    assert torch.equal(both.labels[:, 0], plain.labels)  # clicks unchanged
    assert bool((both.labels[:, 1] <= both.labels[:, 0]).all())  # conversion implies click
    rate = both.labels[:, 1].sum() / both.labels[:, 0].sum()
    assert 0.05 < float(rate) < 0.95  # conversions exist and are not every click
