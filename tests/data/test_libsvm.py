"""The vectorised libsvm / libffm reader against the reference line parser: same rows,
ids and malformed counts, including lines the bulk path hands to the parser."""

import random

from tests.data.helpers import assert_same_rows, read_all

LIBSVM_ODD = ["-1 5:1 7:1", "1 5:1.0 7:1", "1 5:0.5 7:1", "1 5:1", "1 a:1 7:1", "1 9223372036854775808:1 7:1",
              "1 -5:1 7:1", "1 2:5:1 0:3:1", "", "   ", "\x1c", "1 5:1 7:1 \u00e9", "1 5:1 0:7:1", "1.0 5:1 7:1",
              "0\t5:1   7:1", "1 5: 7:1", "1 5:1 7:1:1:1", "1", "1 0:9:1 1:8:1 1:7:1", "0 1:1e0 2:1"]


def test_libsvm_matches_reference(tmp_path):
    rng = random.Random(3)
    lines = [rng.choice(LIBSVM_ODD) if i % 4 == 0 else f"{rng.randint(0, 1)} {rng.randint(0, 10**9)}:1 "
             f"{rng.randint(0, 2**62)}:1" for i in range(300)]
    p = tmp_path / "a.libsvm"
    p.write_bytes(("\n".join(lines[:150]) + "\r\n" + "\r\n".join(lines[150:])).encode())  # no final newline
    for parts in [(0, 1), (1, 2)]:
        for kb in (1, 64):
            ref = read_all(p, "libsvm", "reference", parts, kb, sparse=["u", "i"])
            assert_same_rows(read_all(p, "libsvm", "vectorised", parts, kb, sparse=["u", "i"]), ref)
    lone_cr = tmp_path / "cr.libsvm"
    lone_cr.write_bytes(b"1 5:1 7:1\r0 6:1 8:1\n")
    assert_same_rows(read_all(lone_cr, "libsvm", "vectorised", sparse=["u", "i"]),
                 read_all(lone_cr, "libsvm", "reference", sparse=["u", "i"]))
