import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec import EmbeddingBagCollection

DATA = SyntheticClickData(num_sparse_features=3, num_embeddings=20, dense_in_features=2)


@pytest.fixture(scope="module")
def model() -> DLRM_RankMixer:
    return DLRM_RankMixer(EmbeddingBagCollection(tables=DATA.table_configs(4)), 2, [8, 4], [8, 1])


def _kjt(keys, values, lengths) -> KeyedJaggedTensor:
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.tensor(values), lengths=torch.tensor(lengths))


GOOD_KEYS = ["f0", "f1", "f2"]


def test_good_batch_passes(model) -> None:
    assert model(torch.randn(2, 2), _kjt(GOOD_KEYS, [1, 2, 3, 4, 5, 19], [1] * 6)).shape == (2, 1)


@pytest.mark.parametrize(
    "dense, keys, values, lengths, message",
    [
        (torch.randn(2, 2), ["f0", "f1", "zz"], [1, 2, 3, 4, 5, 6], [1] * 6, r"unknown sparse feature keys \['zz'\]"),
        (torch.randn(2, 2), ["f0", "f1"], [1, 2, 3, 4], [1] * 4, r"missing sparse feature keys \['f2'\]"),
        (torch.randn(2, 2), GOOD_KEYS, [1, 2, 3, 20, 5, 6], [1] * 6, r"feature 'f1' has id 20 outside its table's range \[0, 20\)"),
        (torch.randn(2, 2), GOOD_KEYS, [1, 2, 3, 4, 5, -1], [1] * 6, r"feature 'f2' has id -1"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), GOOD_KEYS, [1] * 6, [1] * 6, r"non-finite value \(NaN/inf\) at row 0, column 1"),
        (torch.randn(3, 2), GOOD_KEYS, [1] * 6, [1] * 6, r"batch size mismatch: dense_features has 3 rows, sparse_features has stride 2"),
        (torch.randn(2, 5), GOOD_KEYS, [1] * 6, [1] * 6, r"dense_features shape \(2, 5\) must be \[B, 2\]"),
        (None, GOOD_KEYS, [1] * 6, [1] * 6, r"dense_features is None"),
    ],
)
def test_bad_inputs_raise(model, dense, keys, values, lengths, message) -> None:
    with pytest.raises(ValueError, match=message):
        model(dense, _kjt(keys, values, lengths))


def test_multi_hot_and_empty_bags_are_fine(model) -> None:
    kjt = _kjt(GOOD_KEYS, [1, 2, 3, 4, 5], [2, 0, 1, 1, 0, 1])
    assert torch.isfinite(model(torch.randn(2, 2), kjt)).all()


def test_float_ids_rejected(model) -> None:
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=GOOD_KEYS, values=torch.tensor([1.0] * 6), lengths=torch.tensor([1] * 6))
    with pytest.raises(ValueError, match="must be integers"):
        model(torch.randn(2, 2), kjt)


def test_validation_can_be_disabled() -> None:
    m = DLRM_RankMixer(EmbeddingBagCollection(tables=DATA.table_configs(4)), 2, [8, 4], [8, 1], validate_inputs=False)
    out = m(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), _kjt(GOOD_KEYS, [1] * 6, [1] * 6))
    assert torch.isnan(out[0]).all()
