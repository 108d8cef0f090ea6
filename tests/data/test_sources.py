"""File readers (CSV, libsvm, Criteo TSV, Parquet, ORC), feature preparation, sharding,
malformed-row accounting. Every test writes its own tiny files."""

import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
import torch

from torchrec_rankmixer.data.features import FeaturePrep, Rows
from torchrec_rankmixer.features.prep import hash_ids
from torchrec_rankmixer.data.files import shard
from torchrec_rankmixer.data.sources import FileSource, MalformedCounter
from torchrec_rankmixer.data.text import CriteoParser, LibsvmParser, MalformedRow
from torchrec_rankmixer.train.config import load_config

FRAPPE_HEADER = "label,user,item,daytime\n"


def _source(tmp_path, fmt, files, *extra, eval_files=(), rank=0, world=1):
    cfg = load_config(overrides=[
        f"data.format={fmt}", f"data.train_files={list(map(str, files))}",
        f"data.eval_files={list(map(str, eval_files))}", "data.batch_size=2", "data.eval_batch_size=3",
        *extra,
    ])
    return FileSource(cfg.data, cfg.model.task == "esmm", rank, world)


def _csv(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text(FRAPPE_HEADER + "".join(r + "\n" for r in rows))
    return p


CSV_COLS = ["data.sparse_columns=[user, item, daytime]", "data.user_column=user", "data.id_transform=none",
            "data.num_embeddings=100"]


def test_csv_batches_and_malformed_rows_are_counted(tmp_path):
    f = _csv(tmp_path, "a.csv", ["1,1,10,20", "0,2,11,21", "2,3,12,22", "0,4,13", "1,5,14,24"])
    src = _source(tmp_path, "csv", [f], *CSV_COLS, "data.max_malformed_fraction=0.5")
    b1, b2 = list(src.train_batches(0, 0, 1, 2))
    assert b1.labels.tolist() == [1.0, 0.0] and b2.labels.tolist() == [1.0, 1.0]  # wraps to epoch 2
    assert b1.sparse_features["item"].values().tolist() == [10, 11]
    assert b1.dense_features.shape == (2, 0)
    report = src.malformed_report()
    assert report["bad_label"] >= 1 and report["wrong_field_count"] >= 1
    assert report["malformed"] == report["bad_label"] + report["wrong_field_count"]


def test_too_many_malformed_rows_fail_the_run(tmp_path):
    f = _csv(tmp_path, "a.csv", ["1,1,10,20", "x,2,11,21"])
    src = _source(tmp_path, "csv", [f], *CSV_COLS, "data.max_malformed_fraction=0")
    with pytest.raises(ValueError, match="malformed.*a.csv:3: bad_label"):
        list(src.train_batches(0, 0, 1, 1))


def test_files_and_rows_are_sharded_across_ranks(tmp_path):
    a = _csv(tmp_path, "a.csv", ["1,1,10,20", "0,2,11,21"])
    b = _csv(tmp_path, "b.csv", ["1,3,12,22", "0,4,13,23"])
    users = lambda src: next(iter(src.train_batches(0, 0, 2, 1))).sparse_features["user"].values().tolist()  # noqa: E731
    assert users(_source(tmp_path, "csv", [a, b], *CSV_COLS, rank=0, world=2)) == [1, 2]
    assert users(_source(tmp_path, "csv", [a, b], *CSV_COLS, rank=1, world=2)) == [3, 4]
    # fewer files than ranks: each rank reads its own line-aligned byte range of the file
    one = _csv(tmp_path, "one.csv", [f"{i % 2},{i},{10 + i},{20 + i}" for i in range(1, 41)])
    parts = []
    for rank in range(2):
        src = _source(tmp_path, "csv", [one], *CSV_COLS, rank=rank, world=2)
        parts.append(torch.cat([r.sparse["user"][1] for r in src.reader.epoch(shard([str(one)], rank, 2))]).tolist())
    assert parts[0] and parts[1] and max(parts[0]) < min(parts[1])
    assert parts[0] + parts[1] == list(range(1, 41))


def test_resume_cursor_skips_consumed_batches(tmp_path):
    f = _csv(tmp_path, "a.csv", [f"{i % 2},{i},{i},{i}" for i in range(10)])
    src = _source(tmp_path, "csv", [f], *CSV_COLS)
    straight = [b.sparse_features["user"].values().tolist() for b in src.train_batches(0, 0, 1, 4)]
    resumed = [b.sparse_features["user"].values().tolist() for b in src.train_batches(2, 0, 1, 2)]
    assert resumed == straight[2:]


def test_eval_is_padded_to_full_batches(tmp_path):
    f = _csv(tmp_path, "a.csv", ["1,1,10,20", "0,2,11,21"])
    ev = _csv(tmp_path, "e.csv", ["1,1,10,20", "0,2,11,21", "1,3,12,22", "0,4,13,23"])
    batches = list(_source(tmp_path, "csv", [f], *CSV_COLS, eval_files=[ev]).eval_batch_iter(0, 1))
    labels = torch.cat([b.labels for b in batches])
    assert [len(b.labels) for b in batches] == [3, 3]
    assert labels.tolist() == [1.0, 0.0, 1.0, 0.0, -1.0, -1.0]  # two padding rows


def test_libsvm_positional_and_field_aware():
    assert LibsvmParser(["u", "i"])("1 5:1 7:1") == ([1.0], [], {"u": [5], "i": [7]})
    with pytest.raises(MalformedRow, match="wrong_field_count"):
        LibsvmParser(["u", "i"])("1 5:1")
    with pytest.raises(MalformedRow, match="weighted_id"):
        LibsvmParser(["u", "i"])("1 5:0.5 7:1")
    with pytest.raises(MalformedRow, match="bad_field"):
        LibsvmParser(["u", "i"])("1 4:5:1")


def test_libsvm_source(tmp_path):
    p = tmp_path / "a.libsvm"
    p.write_text("1 5:1 7:1\n0 6:1 8:1\n")
    src = _source(tmp_path, "libsvm", [p], "data.sparse_columns=[u, i]", "data.id_transform=mod",
                  "data.num_embeddings=4")
    b = next(iter(src.train_batches(0, 0, 1, 1)))
    assert b.sparse_features["u"].values().tolist() == [1, 2]  # 5 % 4, 6 % 4


def test_criteo_tsv_hashes_and_normalises(tmp_path):
    row = lambda y, i1, c1: "\t".join([y, i1] + ["0"] * 12 + [c1] + [""] * 25)  # noqa: E731
    p = tmp_path / "day_0.tsv"
    p.write_text(row("1", "3", "68fd1e64") + "\n" + row("0", "", "") + "\n" + row("1", "x", "a") + "\n")
    src = _source(tmp_path, "criteo", [p], "data.num_embeddings=1000", "data.max_malformed_fraction=1")
    b = next(iter(src.train_batches(0, 0, 1, 1)))
    assert b.dense_features.shape == (2, 13)
    assert b.dense_features[0, 0].item() == pytest.approx(torch.log1p(torch.tensor(3.0)).item())
    c1 = b.sparse_features["C1"]
    assert c1.lengths().tolist() == [1, 0]  # missing categorical = empty bag
    assert c1.values().tolist() == hash_ids(torch.tensor([0x68FD1E64]), 1000).tolist()
    assert src.malformed_report()["bad_dense"] == 1
    with pytest.raises(MalformedRow, match="bad_categorical"):
        CriteoParser()(row("1", "1", "zz"))


def _recis_table():
    return pa.table({
        "label": pa.array([1, 0, 1, None, 0], pa.int64()),
        "x": pa.array([1.0, 2.0, float("nan"), 0.0, 3.0]),
        "uid": pa.array([10, 11, 12, 13, 14], pa.int64()),
        "clicks": pa.array([[1, 2, 3], [], None, [4], [5, None]], pa.list_(pa.int64())),
    })


@pytest.mark.parametrize("fmt", ["parquet", "orc"])
def test_columnar_list_columns(tmp_path, fmt):
    path = tmp_path / f"part-0.{fmt}"
    (pq.write_table if fmt == "parquet" else orc.write_table)(_recis_table(), str(path))
    src = _source(tmp_path, fmt, [path], "data.sparse_columns=[uid, clicks]", "data.dense_columns=[x]",
                  "data.num_embeddings=50", "data.max_malformed_fraction=1", "data.user_column=uid",
                  "data.prefetch_batches=0")  # no read-ahead: the counts below are of one pass
    b = next(iter(src.train_batches(0, 0, 1, 1)))  # valid rows: 0 and 1 (2: NaN, 3: null label, 4: null id)
    assert b.labels.tolist() == [1.0, 0.0]
    clicks = b.sparse_features["clicks"]
    assert clicks.lengths().tolist() == [3, 0]
    assert clicks.values().tolist() == hash_ids(torch.tensor([1, 2, 3]), 50).tolist()
    report = src.malformed_report()
    assert (report["bad_dense"], report["null_label"], report["null_id"]) == (1, 1, 1)


def test_bucketised_dense_and_feature_prep_errors():
    prep = FeaturePrep(["c"], ["x"], 10, {"c": 7}, "none", "none", {"x": [0.0, 10.0]})
    assert [t.num_embeddings for t in prep.table_configs(4)] == [7, 3]
    rows = Rows(torch.ones(3, 1), torch.tensor([[-5.0], [0.0], [50.0]]),
                {"c": (torch.tensor([1, 1, 1]), torch.tensor([0, 6, 9]))})
    with pytest.raises(ValueError, match="raw id 9 outside \\[0, 7\\)"):
        prep.batch(rows)
    ok = prep.batch(rows.slice(0, 2))
    assert ok.sparse_features["x_bucket"].values().tolist() == [0, 1]
    with pytest.raises(ValueError, match="not dense columns"):
        FeaturePrep(["c"], [], 10, {}, "hash", "none", {"z": [1.0]})
    with pytest.raises(ValueError, match="not sparse columns"):
        FeaturePrep(["c"], [], 10, {"z": 3}, "hash", "none", {})


def test_source_errors(tmp_path):
    f = _csv(tmp_path, "a.csv", ["1,1,10,20"])
    with pytest.raises(ValueError, match="does not exist"):
        _source(tmp_path, "csv", [tmp_path / "nope.csv"], *CSV_COLS)
    with pytest.raises(ValueError, match="not in the header"):
        _source(tmp_path, "csv", [f], "data.sparse_columns=[user, nope]")
    with pytest.raises(ValueError, match="data.user_column \\('nope'\\)"):
        _source(tmp_path, "csv", [f], "data.sparse_columns=[user]", "data.user_column=nope")
    counter = MalformedCounter(0.5)
    counter.add_rows(2)
    counter.malformed("bad_label", "f:1")
    counter.malformed("bad_label", "f:2")  # 2 of 2 > 0.5, but only 2 rows read: wait
    with pytest.raises(ValueError, match="2 of 2 rows are malformed"):
        counter.check(final=True)


@pytest.mark.parametrize("case,message", [
    ("binary_csv", r"data file '.*bin.csv' is not UTF-8 text .*binary file given as a text format"),
    ("binary_body", r"data file '.*body.csv' cannot be read as csv"),
    ("string_label", r"parquet file '.*label.parquet': label column 'label' has type string"),
    ("string_id", r"parquet file '.*id.parquet': sparse column 'user' has type string; it must hold integer ids"),
    ("float_id", r"parquet file '.*float.parquet': sparse column 'user' has type double"),
])
def test_bad_data_files_name_the_file_and_column(tmp_path, case, message):
    """Issue 14: a binary file given as CSV, string labels or ids and float ids in Parquet
    are clear errors naming the file and column (not a UTF-8 or pyarrow traceback)."""
    cols = {"user": [1, 2], "item": [3, 4], "daytime": [5, 6]}
    if case == "binary_csv":
        path = tmp_path / "bin.csv"
        path.write_bytes(b"\xff\xfe" + bytes(range(256)) * 8)
        fmt = "csv"
    elif case == "binary_body":
        path = tmp_path / "body.csv"
        path.write_bytes(FRAPPE_HEADER.encode() + b"1,2,3,\xff\xfe\x00\x81\n" * 4)
        fmt = "csv"
    else:
        name = {"string_label": "label", "string_id": "id", "float_id": "float"}[case]
        path = tmp_path / f"{name}.parquet"
        label = ["1", "0"] if case == "string_label" else [1, 0]
        user = {"string_id": ["u1", "u2"], "float_id": [1.5, 2.0]}.get(case, cols["user"])
        pq.write_table(pa.table({"label": label, **cols, "user": user}), path)
        fmt = "parquet"
    with pytest.raises(ValueError, match=message):
        src = _source(tmp_path, fmt, [path], *CSV_COLS, "data.max_malformed_fraction=0.0")
        try:
            list(src.train_batches(0, 0, 1, 1))
        finally:
            src.close()
