"""Block-level batching and the background prefetch: same batches as per-batch
preparation, deterministic order, bounded read-ahead, errors raised in order."""

import threading
import time

import pytest
import torch

from torchrec_rankmixer.data.features import FeaturePrep, Rows
from torchrec_rankmixer.data.stream import CursorStream, Prefetcher, batch_stream


def _rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    sparse = {}
    for f in ("a", "b"):
        lengths = torch.randint(0, 4, (n,), generator=g)
        sparse[f] = (lengths, torch.randint(-2**62, 2**62, (int(lengths.sum()),), generator=g))
    return Rows(torch.randint(0, 2, (n, 1), generator=g).float(), torch.rand(n, 3, generator=g) * 10, sparse)


def _same(x, y):
    assert torch.equal(x.labels, y.labels) and torch.equal(x.dense_features, y.dense_features)
    assert x.sparse_features.keys() == y.sparse_features.keys()
    assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
    assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())
    assert x.sparse_features.length_per_key() == y.sparse_features.length_per_key()


@pytest.mark.parametrize("id_transform", ["hash", "mod"])
def test_block_batches_equal_per_batch_preparation(id_transform):
    prep = FeaturePrep(["a", "b"], ["x", "y", "z"], 97, {"b": 13}, id_transform, "log1p", {"y": [1.0, 5.0]})
    blocks = [_rows(n, s) for s, n in enumerate([5, 40, 3, 77])]
    got = list(batch_stream(iter(blocks), prep, 8, skip=2))
    everything = Rows.cat(blocks)
    want = [prep.batch(everything.slice(i, i + 8)) for i in range(16, len(everything) - 7, 8)]
    assert len(got) == len(want) == 13
    for x, y in zip(got, want):
        _same(x, y)


def test_prefetcher_order_depth_and_errors():
    produced = []

    def make():
        for i in range(100):
            produced.append(i)
            if i == 50:
                raise ValueError("bad row at 50")
            yield i

    p = Prefetcher(make, depth=3)
    assert next(p) == 0
    time.sleep(0.2)
    assert len(produced) <= 1 + 3 + 2  # handed out + queued + one being put (bounded read-ahead)
    assert [next(p) for _ in range(49)] == list(range(1, 50))
    with pytest.raises(ValueError, match="bad row at 50"):
        next(p)
    p.close()


def test_prefetcher_close_stops_the_thread_and_depth_zero_is_synchronous():
    p = Prefetcher(lambda: iter(range(10**9)), depth=2)
    next(p)
    p.close()
    assert not p._thread.is_alive()
    sync = Prefetcher(lambda: iter([threading.current_thread().name]), depth=0)
    assert next(sync) == threading.current_thread().name


def test_cursor_stream_continues_or_restarts():
    starts = []

    def make(i):
        starts.append(i)
        return iter(range(i, 10**6))

    s = CursorStream(make, depth=4)
    assert list(s.take(0, 3)) == [0, 1, 2] and list(s.take(3, 2)) == [3, 4]
    assert list(s.take(2, 1)) == [2]  # a position behind: restart there
    assert starts == [0, 2]
    s.close()
