"""Shared by the reader tests: read a whole file (or part) with one reader, compare rows."""

import torch

from torchrec_rankmixer.data.features import Rows
from torchrec_rankmixer.data.files import FileReader, read_header
from torchrec_rankmixer.data.sources import MalformedCounter


def read_all(path, fmt, reader, parts=(0, 1), block_kb=1, labels=("label",), sparse=(), dense=(), delim=","):
    """(all rows of part ``parts`` of ``path``, the malformed report); blocks of
    ``block_kb * 256`` bytes, small enough to cut the test files into many blocks."""
    counter = MalformedCounter(1.0)
    header = read_header(path, delim) if fmt == "csv" else None
    r = FileReader(fmt, list(labels), list(sparse), list(dense), delim, header, counter, reader, block_kb * 256)
    blocks = list(r.read(str(path), *parts))
    return (Rows.cat(blocks) if blocks else None), counter.report()


def assert_same_rows(a, b):
    (ra, ca), (rb, cb) = a, b
    assert ca == cb
    assert (ra is None) == (rb is None)
    if ra is None:
        return
    assert torch.equal(ra.labels, rb.labels) and torch.equal(ra.dense, rb.dense)
    assert ra.sparse.keys() == rb.sparse.keys()
    for k in ra.sparse:
        assert torch.equal(ra.sparse[k][0], rb.sparse[k][0]), k
        assert torch.equal(ra.sparse[k][1], rb.sparse[k][1]), k
