"""Predictor: in-memory batches, KJTs and CSV/Parquet tables, with checks."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.inference.helpers import DATA, artifact_inputs, small_model
from torchrec_rankmixer.inference.export import export_model
from torchrec_rankmixer.inference.predictor import Predictor, read_table, write_table
from torchrec_rankmixer.inference.quantize import QuantizationOptions


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    return export_model(small_model(seed=7), root, artifact="torchscript")


def _table(n, index=0, with_label=True):
    """Synthetic rows as a pyarrow table: list<int> sparse columns, dense_<i> columns."""
    dense, ids, labels = DATA.sample(n, index)
    cols = {f"f{j}": pa.array(ids[:, j].tolist()) for j in range(ids.shape[1])}
    cols.update({f"dense_{j}": pa.array(dense[:, j].tolist()) for j in range(dense.shape[1])})
    if with_label:
        cols["label"] = pa.array(labels.tolist())
    return pa.table(cols), dense, ids


def test_predict_matches_module(exported):
    p = Predictor(exported.path)
    args = artifact_inputs(9, 2)
    assert torch.equal(p.run(*args), exported.module(*args))
    dense, ids, _ = DATA.sample(9, 2)
    sparse = {f"f{j}": ids[:, j] for j in range(4)}
    assert torch.equal(p.predict(sparse, dense), exported.module(*args))
    assert torch.equal(p.predict_kjt(DATA.batch(9, 2).sparse_features, dense), exported.module(*args))
    assert p.feature_names == ["f0", "f1", "f2", "f3"]
    assert p.dense_feature_names == ["dense_0", "dense_1", "dense_2"]


def test_from_module_in_memory(exported):
    p = Predictor.from_module(exported.module, exported.metadata)
    args = artifact_inputs(3, 0)
    assert torch.equal(p.run(*args), exported.module(*args))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_predict_file_round_trip(exported, tmp_path, suffix):
    p = Predictor(exported.path)
    table, dense, ids = _table(70, index=4)
    if suffix == ".csv":  # bags as "id|id" strings in CSV
        for j in range(4):
            bags = ["|".join(map(str, r)) for r in ids[:, j].tolist()]
            table = table.set_column(j, f"f{j}", pa.array(bags))
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    write_table(table, src)
    summary = p.predict_file(src, dst, batch_size=32, passthrough=["label"], label_column="label")
    assert summary["rows"] == 70 and 0.0 <= summary["auc"] <= 1.0 and summary["logloss"] > 0
    out = read_table(dst)
    assert out.column_names == ["label", "logit", "probability"]
    expected = p.predict({f"f{j}": ids[:, j] for j in range(4)}, dense)[:, 0]
    torch.testing.assert_close(torch.tensor(out.column("logit").to_pylist()), expected)
    torch.testing.assert_close(torch.tensor(out.column("probability").to_pylist()), torch.sigmoid(expected))


def test_table_errors(exported, tmp_path):
    p = Predictor(exported.path)
    table, _, _ = _table(5)
    with pytest.raises(ValueError, match=r"unknown columns \['label'\]"):
        p.predict_table(table)
    with pytest.raises(ValueError, match=r"missing columns \['dense_1'\]"):
        p.predict_table(table.drop(["dense_1"]), passthrough=["label"])
    with pytest.raises(ValueError, match=r"missing columns \['request_id'\]"):
        p.predict_table(table, passthrough=["label", "request_id"])
    bad = table.set_column(1, "f1", pa.array([[1], [2], [99], [3], [4]]))
    with pytest.raises(ValueError, match=r"rows 0..4: feature 'f1' has id 99 outside"):
        p.predict_table(bad, passthrough=["label"])
    nan = table.set_column(4, "dense_0", pa.array([0.0, float("nan"), 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"rows 0..4: dense column 'dense_0' has a non-finite value \(NaN/inf\) at row 1"):
        p.predict_table(nan, passthrough=["label"])
    floats = table.set_column(2, "f2", pa.array([0.5, 1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="is not integer ids"):
        p.predict_table(floats, passthrough=["label"])
    with pytest.raises(ValueError, match="has no rows"):
        p.predict_table(table.slice(0, 0), passthrough=["label"])
    with pytest.raises(ValueError, match=r"batch_size \(0\)"):
        p.predict_table(table, batch_size=0, passthrough=["label"])
    with pytest.raises(ValueError, match="must end in one of"):
        read_table(tmp_path / "x.json")
    with pytest.raises(ValueError, match="does not exist"):
        read_table(tmp_path / "x.parquet")


def test_multi_logit_columns(tmp_path):
    result = export_model(small_model(over_arch_layer_sizes=(16, 2)), tmp_path, artifact="torchscript")
    table, _, _ = _table(4, with_label=False)
    out = Predictor(result.path).predict_table(table)
    assert out.column_names == ["logit_0", "probability_0", "logit_1", "probability_1"]
    pq.write_table(out, tmp_path / "o.parquet")


def test_model_without_dense_input_pt2(tmp_path):
    model = small_model(seed=12, dense_in_features=0)
    result = export_model(model, tmp_path, artifact="export")
    assert result.path.endswith(".pt2")
    p = Predictor(tmp_path)
    assert p.dense_feature_names == []
    for sparse in ({"f0": [1, 2, 3], "f1": [1, 2, 3], "f2": [[1], [], [4, 5]], "f3": [0, 0, 0]},
                   {"f0": [1], "f1": [1], "f2": [[1]], "f3": [0]}):
        args = p.schema.to_tensors(sparse)
        assert args[0].shape == (len(sparse["f0"]), 0)
        assert torch.equal(p.predict(sparse), result.module(*args))


@pytest.mark.parametrize("artifact", ["export", "torchscript"])
def test_esmm_model_exports_and_scores_ctr_cvr_ctcvr(tmp_path, artifact):
    """An ESMM (CTR + CVR towers) model: the artifact matches the float model and the
    predictor names its outputs, with CTCVR = CTR x CVR."""
    model = small_model(seed=5, task="esmm", over_arch_layer_sizes=None, tower_layer_sizes=(12,))
    result = export_model(model, tmp_path, QuantizationOptions(table_dtype="fp32"), artifact=artifact)
    assert result.metadata["task"] == "esmm" and result.metadata["num_logits"] == 2
    assert result.metadata["output"]["shape"] == ["B", 2]
    p = Predictor(result.path)
    assert p.task == "esmm"
    dense, ids, _ = DATA.sample(6, 3)
    sparse = {f"f{j}": ids[:, j] for j in range(4)}
    logits = p.predict(sparse, dense)
    with torch.no_grad():
        want = model(DATA.batch(6, 3).dense_features, DATA.batch(6, 3).sparse_features)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    probs = p.probabilities(sparse, dense)
    torch.testing.assert_close(probs["ctr"], torch.sigmoid(want[:, 0]))
    torch.testing.assert_close(probs["cvr"], torch.sigmoid(want[:, 1]))
    torch.testing.assert_close(probs["ctcvr"], probs["ctr"] * probs["cvr"])
    table, _, _ = _table(6, index=3, with_label=True)
    out = p.predict_table(table, passthrough=["label"])
    assert out.column_names == ["label", "logit_ctr", "logit_cvr", "probability_ctr",
                                "probability_cvr", "probability_ctcvr"]
    torch.testing.assert_close(torch.tensor(out.column("probability_ctcvr").to_pylist()),
                               probs["ctcvr"], rtol=1e-6, atol=1e-7)
    assert Predictor(tmp_path).metadata["model_spec"]["task"] == "esmm"


def test_ctr_predictor_probabilities(exported):
    p = Predictor(exported.path)
    dense, ids, _ = DATA.sample(4, 1)
    probs = p.probabilities({f"f{j}": ids[:, j] for j in range(4)}, dense)
    assert p.task == "ctr" and sorted(probs) == ["ctr"]
    torch.testing.assert_close(probs["ctr"], torch.sigmoid(exported.module(*artifact_inputs(4, 1))[:, 0]))
