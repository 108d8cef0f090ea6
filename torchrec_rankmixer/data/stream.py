"""From row blocks to training batches, off the training thread.

:func:`batch_stream` cuts a stream of row blocks into prepared batches (the feature
transform runs on whole blocks, see :meth:`FeaturePrep.batches`); :class:`Prefetcher` runs
any such iterator in a background thread behind a bounded queue. One producer thread keeps
the order deterministic, so a run resumed at a batch position reads exactly the batches
that the uninterrupted run read there. Memory is bounded by the queue depth (prepared
batches waiting) plus the block in flight, not by the file size.
"""

import atexit
import queue
import threading
import weakref
from typing import Callable, Generic, Iterator, Optional, Tuple, TypeVar

from torchrec.datasets.utils import Batch

from torchrec_rankmixer.data.features import FeaturePrep, Rows

T = TypeVar("T")
_RUNNING: "weakref.WeakSet[Prefetcher]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop producer threads before the interpreter finalises (a daemon thread still inside
    pyarrow's C++ at that point aborts the process)."""
    for p in list(_RUNNING):
        p.close()


def batch_stream(blocks: Iterator[Rows], prep: FeaturePrep, batch_size: int, skip: int = 0) -> Iterator[Batch]:
    """Prepared batches of ``batch_size`` rows from a stream of row blocks; the first
    ``skip`` batches are read but not prepared (resume). Rows left over at the end of a
    block start the next batch.

    Example::

        >>> import torch
        >>> prep = FeaturePrep(["c"], [], 10, {}, "mod", "none", {})
        >>> block = lambda a: Rows(torch.zeros(3, 1), torch.zeros(3, 0),
        ...                        {"c": (torch.ones(3, dtype=torch.long), torch.arange(a, a + 3))})
        >>> [b.sparse_features["c"].values().tolist() for b in batch_stream(iter([block(0), block(3)]), prep, 2, skip=1)]
        [[2, 3], [4, 5]]
    """
    carry: Optional[Rows] = None
    to_skip = skip * batch_size
    for rows in blocks:
        if carry is not None and len(carry):
            rows = Rows.cat([carry, rows])
        if to_skip:
            k = min(to_skip, len(rows))
            to_skip -= k
            rows = rows.slice(k, len(rows))
        n = len(rows) // batch_size * batch_size
        if n:
            yield from prep.batches(rows, batch_size)
        carry = rows.slice(n, len(rows))


class Prefetcher(Generic[T]):
    """Items of ``make()`` produced by one background thread into a queue of ``depth``
    items and handed out in order; ``depth=0`` produces them in the caller's thread.

    An exception raised while producing is raised by :meth:`__next__` at its place in the
    order. ``position`` counts items handed out, starting at ``start``.

    Args:
        make: builds the iterator (called in the background thread).
        depth: queue length (items produced ahead), 0 for no thread.
        start: the position of the first item (e.g. the batch index it resumes at).

    Example::

        >>> p = Prefetcher(lambda: iter(range(5)), depth=2, start=10)
        >>> [next(p), next(p)], p.position
        ([0, 1], 12)
        >>> p.close()
    """

    def __init__(self, make: Callable[[], Iterator[T]], depth: int, start: int = 0) -> None:
        self.position = start
        self._it: Optional[Iterator[T]] = None
        self._thread: Optional[threading.Thread] = None
        self._done = False
        if depth <= 0:
            self._it = make()
            return
        self._queue: "queue.Queue[Tuple[str, object]]" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make,), name="rankmixer-prefetch", daemon=True)
        _RUNNING.add(self)
        self._thread.start()

    def _put(self, item: Tuple[str, object]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[T]]) -> None:
        try:
            for item in make():
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(("error", e))

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        if self._thread is None:
            item = next(self._it)  # type: ignore[arg-type]
        else:
            kind, value = self._queue.get()
            if kind == "error":
                self._done = True
                raise value  # type: ignore[misc]
            if kind == "end":
                self._done = True
                raise StopIteration
            item = value  # type: ignore[assignment]
        self.position += 1
        return item

    def close(self) -> None:
        """Stop the producer thread and drop what it produced ahead."""
        if self._thread is None:
            return
        self._stop.set()
        _RUNNING.discard(self)
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


class CursorStream:
    """A prefetched batch stream kept across the trainer's calls: asking for the batches at
    the position where the previous call stopped continues the running stream (reading
    overlaps training, evaluation and checkpoints); any other position (a resume, a look
    ahead) starts a new stream there.

    Args:
        make: local batch index -> iterator of this rank's batches from that index on.
        depth: prefetch queue length (0: read in the caller's thread).

    Example::

        >>> s = CursorStream(lambda i: iter(range(i, 100)), depth=2)
        >>> list(s.take(0, 2)), list(s.take(2, 2)), list(s.take(10, 1))
        ([0, 1], [2, 3], [10])
        >>> s.close()
    """

    def __init__(self, make: Callable[[int], Iterator[T]], depth: int) -> None:
        self.make, self.depth = make, depth
        self._stream: Optional[Prefetcher[T]] = None

    def take(self, start: int, num: int) -> Iterator[T]:
        """``num`` items from local index ``start`` on."""
        if self._stream is None or self._stream.position != start:
            self.close()
            self._stream = Prefetcher(lambda: self.make(start), self.depth, start=start)
        stream = self._stream
        for _ in range(num):
            yield next(stream)

    def close(self) -> None:
        """Stop the background reader (a later :meth:`take` starts a new one)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
