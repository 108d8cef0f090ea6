"""Files -> blocks of parsed rows, for one rank's share.

Sharding (:func:`shard`): with at least as many files as ranks, rank ``r`` of ``W`` reads
whole files ``r, r + W, ...``; with fewer files, every file is cut into ``W`` parts and rank
``r`` reads part ``r`` of each (text: a line-aligned byte range; Parquet/ORC: a range of
row groups / stripes, or of rows when a file has fewer of those than ranks). No rank reads
the others' parts.

Text formats are read by the vectorised readers (``data.text_reader=vectorised``, the
default) or line by line by the reference parsers (``reference``); both give the same rows.
"""

from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa

from torchrec_rankmixer.data.blocks import Block, byte_range, read_blocks
from torchrec_rankmixer.data.features import Rows
from torchrec_rankmixer.data.libsvm import LibsvmReader
from torchrec_rankmixer.data.stream import Prefetcher
from torchrec_rankmixer.data.text import CRITEO_DENSE, CRITEO_SPARSE, make_parser, reference_block_rows
from torchrec_rankmixer.data.vectorised import DelimitedReader

if TYPE_CHECKING:
    from torchrec_rankmixer.data.sources import MalformedCounter

TEXT_FORMATS = ("csv", "libsvm", "criteo")
PARSE_AHEAD = 1  # blocks parsed ahead of the one being converted
Part = Tuple[str, int, int]  # (path, part, parts)


def shard(files: Sequence[str], rank: int, world_size: int) -> List[Part]:
    """This rank's ``(path, part, parts)`` list.

    Example::

        >>> shard(["a", "b", "c"], 1, 2), shard(["a"], 1, 2)
        ([('b', 0, 1)], [('a', 1, 2)])
    """
    if len(files) >= world_size:
        return [(f, 0, 1) for f in files[rank::world_size]]
    return [(f, rank, world_size) for f in files]


def read_header(path: str, delimiter: str) -> List[str]:
    """The CSV header line's column names (stripped); ValueError naming the file when it is
    not UTF-8 text."""
    try:
        with open(path, "rb") as f:
            line = f.readline().decode("utf-8")
        return [h.strip() for h in line.rstrip("\r\n").split(delimiter)]
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {path!r} is not UTF-8 text (byte {e.start} of its header): is it a "
                         "binary file given as a text format?") from None


class FileReader:
    """Blocks of valid rows from files of one format (malformed rows counted, dropped).

    Args:
        fmt: ``csv``, ``libsvm``, ``criteo``, ``parquet`` or ``orc``.
        labels / sparse / dense: column names (Criteo: a selection of C1..C26 / I1..I13).
        delimiter: CSV separator.
        header: the CSV header (names of the columns), None for other formats.
        counter: where rows and malformed rows are counted.
        text_reader: ``vectorised`` or ``reference``.
        block_bytes: size of the text blocks read at a time.

    Example::

        >>> import tempfile
        >>> from torchrec_rankmixer.data.sources import MalformedCounter
        >>> with tempfile.NamedTemporaryFile("w", suffix=".libsvm", delete=False) as f:
        ...     _ = f.write("1 5:1 7:1\\n0 6:1 8:1\\n")
        >>> reader = FileReader("libsvm", ["label"], ["u", "i"], [], ",", None, MalformedCounter(0.0), "vectorised", 1 << 20)
        >>> [rows.sparse["i"][1].tolist() for rows in reader.read(f.name, 0, 1)]
        [[7, 8]]
    """

    def __init__(self, fmt: str, labels: List[str], sparse: List[str], dense: List[str], delimiter: str,
                 header: Optional[List[str]], counter: "MalformedCounter", text_reader: str,
                 block_bytes: int) -> None:
        self.fmt, self.labels, self.sparse, self.dense = fmt, labels, sparse, dense
        self.counter, self.block_bytes = counter, block_bytes
        self.read_block: Optional[Callable[[Block], Optional[Rows]]] = None
        self.delimited: Optional[DelimitedReader] = None
        if fmt not in TEXT_FORMATS:
            return
        if fmt == "criteo":
            unknown = [c for c in [*sparse, *dense] if c not in CRITEO_SPARSE + CRITEO_DENSE]
            if unknown:
                raise ValueError(f"data.sparse_columns / data.dense_columns name {unknown}; Criteo TSV has "
                                 f"{CRITEO_SPARSE[0]}..{CRITEO_SPARSE[-1]} and {CRITEO_DENSE[0]}..{CRITEO_DENSE[-1]}")
        parser = make_parser(fmt, header, labels, sparse, dense, delimiter)
        dense_pick = [CRITEO_DENSE.index(c) for c in dense] if fmt == "criteo" else None
        if text_reader == "reference" or (fmt == "csv" and len(delimiter) != 1):
            self.read_block = lambda b: reference_block_rows(b, parser, fmt == "csv" and b.offset == 0, counter,
                                                             len(labels), sparse, len(dense), dense_pick)
        elif fmt == "libsvm":
            libsvm = LibsvmReader(sparse)
            self.read_block = lambda b: libsvm.rows(b, counter)
        else:
            self.delimited = self._delimited(fmt, header, delimiter)
            self.read_block = lambda b: self.delimited.rows(b, counter)

    def _delimited(self, fmt: str, header: Optional[List[str]], delimiter: str) -> DelimitedReader:
        if fmt == "csv":
            col = {c: i for i, c in enumerate(header or [])}
            pick = lambda names: [(c, col[c]) for c in names]  # noqa: E731
            return DelimitedReader(len(header or []), pick(self.labels), pick(self.dense),
                                   pick(self.sparse), delimiter, "csv", header=True)
        k = len(self.labels)
        labels = [(c, i) for i, c in enumerate(self.labels)]
        dense = [(c, k + j) for j, c in enumerate(CRITEO_DENSE)]
        sparse = [(c, k + 13 + j) for j, c in enumerate(CRITEO_SPARSE)]
        return DelimitedReader(k + 39, labels, dense, sparse, "\t", "hex", header=False,
                               keep_dense=self.dense, keep_sparse=self.sparse)

    def read(self, path: str, part: int, parts: int) -> Iterator[Rows]:
        """Blocks of valid rows of part ``part`` of ``parts`` of ``path``; a file the format's
        reader cannot parse is a ValueError naming it."""
        try:
            yield from self._read(path, part, parts)
        except (pa.ArrowException, UnicodeDecodeError) as e:
            first = " ".join(str(e).split())[:300]
            raise ValueError(f"data file {path!r} cannot be read as {self.fmt}: {type(e).__name__}: {first}") from None

    def _read(self, path: str, part: int, parts: int) -> Iterator[Rows]:
        if self.read_block is None:
            from torchrec_rankmixer.data.columnar import read_columnar

            yield from read_columnar(path, self.fmt, self.labels, self.dense, self.sparse, self.counter, part, parts)
            return
        start, end = byte_range(path, part, parts)
        blocks = read_blocks(path, start, end, self.block_bytes)
        if self.delimited is None:
            for block in blocks:
                rows = self.read_block(block)
                if rows is not None and len(rows):
                    yield rows
            return
        # pyarrow parses the next block (in its own threads) while this one is converted
        parsed = Prefetcher(lambda: map(self.delimited.parse, blocks), depth=PARSE_AHEAD)  # type: ignore[union-attr]
        try:
            for p in parsed:
                rows = self.delimited.convert(p, self.counter)  # type: ignore[union-attr]
                if rows is not None and len(rows):
                    yield rows
        finally:
            parsed.close()

    def epoch(self, parts: List[Part]) -> Iterator[Rows]:
        """One pass over ``parts``; checks the malformed fraction at the end."""
        for path, part, n in parts:
            yield from self.read(path, part, n)
        self.counter.check(final=True)
