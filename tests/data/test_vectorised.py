"""The vectorised CSV / Criteo TSV readers against the reference line parsers:
same rows, same raw ids (hence the same hashed ids), same malformed counts, on files with
blank lines, text ids, 64-bit ids and malformed rows, read in small blocks and in parts."""

import random

import pyarrow as pa
import pytest
import torch

from tests.data.helpers import assert_same_rows as _assert_same
from tests.data.helpers import read_all as _read
from torchrec_rankmixer.data.blocks import Block
from torchrec_rankmixer.data.files import FileReader, read_header
from torchrec_rankmixer.data.sources import FileSource, MalformedCounter
from torchrec_rankmixer.data.text import CRITEO_DENSE, CRITEO_SPARSE, csv_id, hex_id
from torchrec_rankmixer.data.vectorised import by_unique, csv_id_column, hex_column
from torchrec_rankmixer.train.config import load_config

ODD_IDS = ["abc", " 42", "0x10", "-5", "+7", "\u0661\u0662", "1_0", "", "  ", "9223372036854775807",
           "-9223372036854775808", "9223372036854775808", "18446744073709551615", "007", "x y", "\u00e9t\u00e9"]
ODD_DENSE = ["1e3", " 2.5", "", " ", "nan", "inf", "x", "1_0", "-0", "1e400", ".5", "5.", "+3", "0x1p3"]
ODD_LABELS = ["1", "0", "1.0", " 1", "2", "", "x", "-0", "1e0", "+1"]


def _csv_file(tmp_path, rng):
    lines = ["label,user,item,city,x,unused"]
    for i in range(400):
        if i % 37 == 0:
            lines.append(random.choice(["", "   ", "\t"]))
            continue
        odd = i % 3 == 0
        user = rng.choice(ODD_IDS) if odd else str(rng.randint(0, 10**6))
        item = rng.choice(ODD_IDS) if i % 5 == 0 else str(rng.randint(-3, 2**63 - 1))
        x = rng.choice(ODD_DENSE) if i % 7 == 0 else f"{rng.random() * 100:.3f}"
        y = rng.choice(ODD_LABELS) if i % 11 == 0 else str(rng.randint(0, 1))
        row = [y, user, item, rng.choice(["paris", "", "tokyo", "3"]), x, "u"]
        if i % 29 == 0:
            row = row[:-2]  # wrong field count
        lines.append(",".join(row))
    p = tmp_path / "odd.csv"
    p.write_bytes(("\r\n".join(lines[:200]) + "\n" + "\n".join(lines[200:]) + "\n").encode())
    return p


def test_csv_matches_reference(tmp_path):
    p = _csv_file(tmp_path, random.Random(0))
    cols = dict(sparse=["user", "item", "city"], dense=["x"])
    for parts in [(0, 1), (0, 2), (1, 2), (2, 3)]:
        for kb in (1, 64):
            ref = _read(p, "csv", "reference", parts, kb, **cols)
            _assert_same(_read(p, "csv", "vectorised", parts, kb, **cols), ref)
    report = _read(p, "csv", "vectorised", **cols)[1]
    assert report["wrong_field_count"] and report["bad_label"] and report["bad_dense"]


def _criteo_line(rng, odd):
    y = rng.choice(ODD_LABELS) if odd == 1 else str(rng.randint(0, 1))
    dense = [rng.choice(ODD_DENSE) if odd == 2 and j == 3 else rng.choice(["", str(rng.randint(0, 999))])
             for j in range(13)]
    cats = [f"{rng.getrandbits(32):08x}" if rng.random() > 0.1 else "" for _ in range(26)]
    if odd == 3:
        cats[rng.randrange(26)] = rng.choice(["A1B2C3D4", "a", "ffffffffffffffff", "7fffffffffffffff", "0x1f",
                                              " 1a", "zz", "-1a", "1_f", "\u0661"])
    return "\t".join([y, *dense, *cats])


def test_criteo_matches_reference(tmp_path):
    rng = random.Random(1)
    lines = [_criteo_line(rng, i % 5 if i % 4 == 0 else 0) for i in range(300)]
    lines[10], lines[20], lines[30] = "\t" * 39, "1\t2\t3", ""  # blank (skipped), wrong count, blank
    p = tmp_path / "day_0.tsv"
    p.write_bytes(("\n".join(lines[:150]) + "\r\n" + "\r\n".join(lines[150:]) + "\n").encode())
    for parts in [(0, 1), (1, 2), (1, 3)]:
        for kb in (1, 64):
            ref = _read(p, "criteo", "reference", parts, kb, sparse=CRITEO_SPARSE, dense=CRITEO_DENSE, delim="\t")
            got = _read(p, "criteo", "vectorised", parts, kb, sparse=CRITEO_SPARSE, dense=CRITEO_DENSE, delim="\t")
            _assert_same(got, ref)
    report = _read(p, "criteo", "vectorised", sparse=CRITEO_SPARSE, dense=CRITEO_DENSE, delim="\t")[1]
    assert report["bad_categorical"] and report["wrong_field_count"] == 1 and report["bad_dense"]


def test_criteo_column_selection_matches_reference(tmp_path):
    rng = random.Random(2)
    p = tmp_path / "d.tsv"
    p.write_text("\n".join(_criteo_line(rng, i % 4) for i in range(100)) + "\n")
    cols = dict(sparse=["C3", "C1"], dense=["I2"], delim="\t")
    _assert_same(_read(p, "criteo", "vectorised", **cols), _read(p, "criteo", "reference", **cols))


def test_hashed_batches_match_reference_end_to_end(tmp_path):
    """Through FileSource.train_batches (hashing, buckets, log1p, batching): same batches."""
    rng = random.Random(4)
    p = tmp_path / "day.tsv"
    p.write_text("\n".join(_criteo_line(rng, i % 4) for i in range(500)) + "\n")

    def batches(reader):
        cfg = load_config(overrides=[
            "data.format=criteo", f"data.train_files=[{p}]", "data.batch_size=16", "data.num_embeddings=1000",
            "data.max_malformed_fraction=1", f"data.text_reader={reader}", "data.bucket_boundaries={I2: [1, 10, 100]}",
        ])
        src = FileSource(cfg.data, False, 0, 1)
        out = list(src.train_batches(0, 0, 1, 40))  # more than one epoch
        src.close()
        return out

    for a, b in zip(batches("vectorised"), batches("reference")):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.dense_features, b.dense_features)
        assert a.sparse_features.keys() == b.sparse_features.keys()
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
        assert torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths())


@pytest.mark.parametrize("tokens", [ODD_IDS, [str(i) for i in range(50)] + ["", "7"]])
def test_id_columns_match_reference_functions(tokens):
    c = csv_id_column(pa.array(tokens))
    want = [csv_id(t) for t in tokens]
    assert [v if p else None for v, p in zip(c.values.tolist(), c.present.tolist())] == want


def test_hex_column_and_errors():
    toks = ["68fd1e64", "", "A1B2C3D4", "zz", "ffffffffffffffff", "a"]
    c = hex_column(pa.array([t.encode() for t in toks]))
    assert c.reason == "bad_categorical" and c.bad.tolist() == [False, False, False, True, True, False]
    assert c.full()[[0, 2, 5]].tolist() == [hex_id("68fd1e64"), hex_id("A1B2C3D4"), 10]
    fixed = hex_column(pa.array([b"0000000a", b""]))
    assert fixed.full().tolist() == [10, 0] and fixed.present.tolist() == [True, False]
    assert by_unique(pa.array(["1", "2"]), lambda t: None, float).present.tolist() == [False, False]


def test_malformed_place_names_file_line_column_and_value(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("label,user,x\n1,1,2\n\n1,2,oops\n")
    counter = MalformedCounter(0.0)
    reader = FileReader("csv", ["label"], ["user"], ["x"], ",", read_header(str(p), ","), counter, "vectorised", 1 << 20)
    with pytest.raises(ValueError, match=r"a.csv:4: bad_dense \(column 'x', value 'oops'\)"):
        list(reader.read(str(p), 0, 1))
    block = Block(str(p), 0, p.read_bytes())
    assert block.first_line_number() == 1
