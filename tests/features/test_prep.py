"""RawFeaturePrep (features/prep.py): training's feature preparation, in the artifact too."""

import pytest
import torch

from torchrec_rankmixer.data.features import FeaturePrep, Rows
from torchrec_rankmixer.features.prep import RawFeaturePrep, hash_ids
from torchrec_rankmixer.inference.export import export_model
from torchrec_rankmixer.inference.predictor import Predictor
from torchrec_rankmixer.inference.quantize import QuantizationOptions, build_inference_model
from torchrec_rankmixer.models.spec import ModelSpec, TableSpec

SPARSE, DENSE = ["u", "i"], ["x", "y", "z"]
BOUNDS = {"y": [0.0, 1.0, 5.0]}


def _prep(id_transform: str = "hash", dense_transform: str = "log1p") -> FeaturePrep:
    return FeaturePrep(SPARSE, DENSE, 30, {"i": 7}, id_transform, dense_transform, BOUNDS)


def _rows(n: int = 9, seed: int = 0, max_id: int = 2**62) -> Rows:
    g = torch.Generator().manual_seed(seed)
    sparse = {}
    for f in SPARSE:
        lengths = torch.randint(0, 3, (n,), generator=g)  # empty bags too
        values = torch.randint(-max_id, max_id, (int(lengths.sum()),), generator=g)
        sparse[f] = (lengths, values)
    dense = torch.randn(n, len(DENSE), generator=g) * 3
    return Rows(torch.zeros(n, 1), dense, sparse)


def _raw_inputs(rows: Rows):
    values = torch.cat([rows.sparse[f][1] for f in SPARSE])
    lengths = torch.stack([rows.sparse[f][0] for f in SPARSE]).to(torch.int32)
    return rows.dense, values, lengths


@pytest.mark.parametrize("id_transform,dense_transform", [("hash", "log1p"), ("mod", "none"), ("none", "log1p")])
def test_matches_training_feature_prep(id_transform: str, dense_transform: str) -> None:
    prep = _prep(id_transform, dense_transform)
    rows = _rows(max_id=7 if id_transform == "none" else 2**62)
    if id_transform == "none":  # ids must already be in range
        rows.sparse = {f: (ln, v.abs() % 7) for f, (ln, v) in rows.sparse.items()}
    want = prep.batch(rows)
    raw = prep.module
    dense, values, lengths = raw(*_raw_inputs(rows))
    assert raw.model_feature_names == want.sparse_features.keys() == ["u", "i", "y_bucket"]
    assert torch.equal(values, want.sparse_features.values())
    assert torch.equal(lengths.reshape(-1).to(torch.int32), want.sparse_features.lengths().to(torch.int32))
    torch.testing.assert_close(dense, want.dense_features)
    assert raw.raw_id_features == ([] if id_transform == "none" else SPARSE)
    # both against the transform written out feature by feature
    rows_of = {"u": 30, "i": 7}
    expect = [{"hash": lambda v, n: hash_ids(v, n), "mod": torch.remainder, "none": lambda v, n: v}[id_transform](
        rows.sparse[f][1], rows_of[f]) for f in SPARSE]
    expect.append(torch.bucketize(rows.dense[:, 1], torch.tensor(BOUNDS["y"]), right=True))
    assert torch.equal(values, torch.cat(expect))
    kept = rows.dense[:, [0, 2]]
    torch.testing.assert_close(dense, torch.log1p(kept.clamp(min=0.0)) if dense_transform == "log1p" else kept)


def _model_for(prep: FeaturePrep) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(
        tables=tuple(TableSpec(f"t_{f}", 8, n, (f,)) for f, n in prep.rows.items()),
        dense_in_features=prep.dense_in_features, dense_arch_layer_sizes=(8,),
        over_arch_layer_sizes=(8, 1),
        rankmixer_config={"d_model": 16, "num_tokens": 4, "num_layers": 1})
    return spec.build().eval()


@pytest.mark.parametrize("artifact", ["export", "torchscript"])
def test_artifact_with_preparation_scores_raw_columns_as_training(tmp_path, artifact: str) -> None:
    prep = _prep()
    model = _model_for(prep)
    raw = prep.module
    result = export_model(model, tmp_path, QuantizationOptions(table_dtype="fp32"), artifact, feature_prep=raw)
    meta = result.metadata
    assert meta["artifact"] == ("torch.export" if artifact == "export" else "torchscript"), meta["fallback_reason"]
    assert meta["feature_names"] == SPARSE and meta["dense_feature_names"] == DENSE
    assert meta["raw_id_features"] == SPARSE and meta["inputs"]["dense"]["shape"] == ["B", 3]
    assert meta["preprocessing"]["model_feature_names"] == ["u", "i", "y_bucket"]
    rows = _rows(n=11, seed=4)
    batch = prep.batch(rows)
    with torch.no_grad():
        want = model(batch.dense_features, batch.sparse_features)
    predictor = Predictor(result.path)
    torch.testing.assert_close(predictor.run(*_raw_inputs(rows)), want, rtol=1e-5, atol=1e-6)
    sparse = {f: [rows.sparse[f][1][int(s):int(s + n)].tolist() for s, n in zip(
        torch.cumsum(rows.sparse[f][0], 0) - rows.sparse[f][0], rows.sparse[f][0])] for f in SPARSE}
    got = predictor.predict(sparse, rows.dense.tolist())  # raw 62-bit ids, raw dense values
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bad_settings_and_model_mismatch_raise() -> None:
    with pytest.raises(ValueError, match=r"id_transform \('md5'\)"):
        RawFeaturePrep(SPARSE, [3, 3], "md5", DENSE, "log1p", {})
    with pytest.raises(ValueError, match=r"dense_transform \('zscore'\)"):
        RawFeaturePrep(SPARSE, [3, 3], "hash", DENSE, "zscore", {})
    with pytest.raises(ValueError, match=r"table_rows \(\[3\]\) must give one size"):
        RawFeaturePrep(SPARSE, [3], "hash", DENSE, "log1p", {})
    with pytest.raises(ValueError, match=r"bucket_boundaries names \['w'\]"):
        RawFeaturePrep(SPARSE, [3, 3], "hash", DENSE, "log1p", {"w": [1.0]})
    model = _model_for(_prep())
    other = RawFeaturePrep(SPARSE, [30, 7], "hash", DENSE, "log1p", {})  # no y_bucket
    with pytest.raises(ValueError, match="feature_prep gives features"):
        build_inference_model(model, QuantizationOptions(table_dtype="fp32"), feature_prep=other)


def test_text_ids_in_a_table_are_hashed_as_the_training_reader_does(tmp_path) -> None:
    import pyarrow as pa

    from torchrec_rankmixer.data.text import raw_id

    prep = _prep()
    model = _model_for(prep)
    raw = prep.module
    result = export_model(model, tmp_path, QuantizationOptions(table_dtype="fp32"), "torchscript", feature_prep=raw)
    users, items = ["alice", "bob|42", "", "carol"], [[5], [6, 7], [], [2**61]]
    dense = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.5, 0.0], [1.0, 7.0, 1.0], [0.0, 2.0, 9.0]])
    table = pa.table({"u": users, "i": items, **{c: dense[:, j].tolist() for j, c in enumerate(DENSE)}})
    scores = Predictor(result.path).predict_table(table)
    user_bags = [[raw_id(t) for t in u.split("|")] if u else [] for u in users]
    rows = Rows(torch.zeros(4, 1), dense, {
        "u": (torch.tensor([len(b) for b in user_bags]), torch.tensor([v for b in user_bags for v in b])),
        "i": (torch.tensor([len(b) for b in items]), torch.tensor([v for b in items for v in b])),
    })
    batch = prep.batch(rows)
    with torch.no_grad():
        want = model(batch.dense_features, batch.sparse_features)[:, 0]
    torch.testing.assert_close(torch.tensor(scores.column("logit").to_pylist()), want, rtol=1e-5, atol=1e-5)
    assert raw_id("bob") != 42 and raw_id("42") == 42  # integers stay ids, text is hashed
