"""Vectorised readers for delimited text (CSV with a header, Criteo TSV): a
:class:`~torchrec_rankmixer.data.blocks.Block` of lines -> :class:`Rows` with pyarrow's
multi-threaded CSV parser and column operations; no per-row Python.

The same ids and values come out as from the line parsers of ``data/text.py`` (the
reference path, tested against this one): a column is converted in bulk only where the
bulk conversion provably agrees with the reference (typed float parsing, hex of 8-digit
tokens, decimal integers); every other token goes through the reference function once
per distinct token (``parse_label``, ``parse_dense``, ``csv_id``, ``hex_id``). Malformed
rows are counted per reason with the first place (``file:line``, column, value).
"""

import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch

from torchrec_rankmixer.data.blocks import Block
from torchrec_rankmixer.data.features import Rows
from torchrec_rankmixer.data.text import MalformedRow, csv_id, hex_id, parse_dense, parse_label

if TYPE_CHECKING:
    from torchrec_rankmixer.data.sources import MalformedCounter

_EMPTY, _BAD = 1, 2


@dataclass
class Column:
    """One converted column of a block.

    Shapes: values [N] (float64 or int64; 0 where empty or bad; ids may hold only
    ``compact``, see :meth:`full`), present [N] bool (ids:
    False is an empty bag), bad [N] bool or None; ``source`` is the text column (for the
    value named in error messages)."""

    values: Optional[np.ndarray]
    present: np.ndarray
    bad: Optional[np.ndarray]
    reason: str
    source: "pa.Array | pa.ChunkedArray"
    compact: Optional[np.ndarray] = None  # ids only: the values of the present rows

    def full(self) -> np.ndarray:
        """values [N] (0 where empty)."""
        if self.values is None:
            self.values = np.zeros(len(self.present), np.int64)
            self.values[self.present] = self.compact
        return self.values

    def present_values(self) -> np.ndarray:
        """The values of the present rows."""
        return self.compact if self.compact is not None else self.values[self.present]  # type: ignore[index]


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]


def by_unique(col: pa.Array, fn: Callable[[str], object], dtype: type) -> Column:
    """Convert ``col`` by calling the reference function ``fn`` once per distinct token.

    ``fn`` returns a number, None (an empty bag) or raises :class:`MalformedRow`.

    Example::

        >>> c = by_unique(pa.array(["1", "x", "1", ""]), parse_dense, np.float64)
        >>> c.values.tolist(), c.bad.tolist(), c.reason
        ([1.0, 0.0, 1.0, 0.0], [False, True, False, False], 'bad_dense')
    """
    col = _combined(col)
    enc = pc.dictionary_encode(col)
    uniq = enc.dictionary.to_pylist()
    vals, status, reason = np.zeros(len(uniq), dtype), np.zeros(len(uniq), np.int8), ""
    for j, token in enumerate(uniq):
        try:
            v = fn(_text(token))
        except MalformedRow as e:
            status[j], reason = _BAD, reason or e.reason
            continue
        if v is None:
            status[j] = _EMPTY
        else:
            vals[j] = v
    idx = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False)
    st = status[idx] if len(uniq) else np.zeros(len(col), np.int8)
    bad = st == _BAD
    return Column(vals[idx] if len(uniq) else np.zeros(len(col), dtype), st != _EMPTY,
                  bad if bad.any() else None, reason, col)


def _combined(col: "pa.Array | pa.ChunkedArray") -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _offsets(col: pa.Array) -> Tuple[np.ndarray, Optional[pa.Buffer]]:
    bufs = col.buffers()
    return np.frombuffer(bufs[1], np.int32, len(col) + 1, col.offset * 4), bufs[2]


def hex_column(col: "pa.Array | pa.ChunkedArray") -> Column:
    """Criteo categorical column (binary): 8-digit hex tokens decoded in bulk, anything
    else through :func:`~torchrec_rankmixer.data.text.hex_id`.

    Example::

        >>> hex_column(pa.array([b"68fd1e64", b"", b"0a"])).full().tolist()
        [1761418852, 0, 10]
    """
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    presents, compacts = [], []
    for chunk in chunks:
        off, data = _offsets(chunk)
        lengths = np.diff(off)
        present = lengths > 0
        raw = None
        if data is not None and bool(np.all(lengths[present] == 8)):
            try:
                raw = binascii.a2b_hex(memoryview(data)[off[0]:off[-1]])
            except binascii.Error:
                pass
        if raw is None and present.any():
            return by_unique(_combined(col), hex_id, np.int64)
        presents.append(present)
        compacts.append(np.frombuffer(raw, ">u4").astype(np.int64) if raw is not None else np.zeros(0, np.int64))
    present = np.concatenate(presents) if presents else np.zeros(0, bool)
    compact = np.concatenate(compacts) if compacts else np.zeros(0, np.int64)
    return Column(None, present, None, "", col, compact)


def csv_id_column(col: pa.Array) -> Column:
    """CSV categorical column (string): decimal integers converted in bulk, other text
    through :func:`~torchrec_rankmixer.data.text.csv_id` (hash of the text, blank = empty bag).

    Example::

        >>> csv_id_column(pa.array(["42", "", " "])).present.tolist()
        [True, False, False]
    """
    col = _combined(col)
    present = pc.binary_length(col).to_numpy(zero_copy_only=False) > 0
    decimal = pc.fill_null(pc.ascii_is_decimal(col), False).to_numpy(zero_copy_only=False)
    values = np.zeros(len(col), np.int64)
    need = present & ~decimal
    if decimal.any():
        try:
            values[decimal] = pc.cast(col.filter(pa.array(decimal)), pa.int64()).to_numpy()
        except (pa.ArrowInvalid, OverflowError):
            need = present
    if need.any():
        sub = by_unique(col.filter(pa.array(need)), csv_id, np.int64)
        values[need], present[need] = sub.values, sub.present
    return Column(values, present, None, "", col)


def typed_label(col: pa.Array) -> Column:
    """Label column read as float64 by pyarrow (empty = null = malformed)."""
    v = pc.fill_null(col, -1.0).to_numpy(zero_copy_only=False)
    bad = (v != 0.0) & (v != 1.0)
    return Column(np.where(bad, 0.0, v), np.ones(len(v), bool), bad if bad.any() else None, "bad_label", col)


def typed_dense(col: pa.Array) -> Column:
    """Dense column read as float64 by pyarrow (empty = null = 0.0; NaN/inf malformed)."""
    v = pc.fill_null(col, 0.0).to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(v)
    return Column(np.where(bad, 0.0, v), np.ones(len(v), bool), bad if bad.any() else None, "bad_dense", col)


class _Lines:
    """The block's lines (universal newlines), mapped to the rows pyarrow returned; built
    only when a malformed row needs its place or its text."""

    def __init__(self, block: Block, delimiter: bytes, width: int, skip: int) -> None:
        self.block, self.delimiter, self.width, self.skip = block, delimiter, width, skip
        self._lines: Optional[List[bytes]] = None

    def _build(self) -> None:
        self._lines = bytes(self.block.data).splitlines()
        d, w = self.delimiter, self.width - 1
        self.rows = [i for i, ln in enumerate(self._lines) if i >= self.skip and ln and ln.count(d) == w]
        self.invalid = [i for i, ln in enumerate(self._lines)
                        if i >= self.skip and ln and ln.count(d) != w and _text(ln).strip()]
        self.first = self.block.first_line_number()

    def row_text(self, row: int) -> str:
        if self._lines is None:
            self._build()
        return _text(self._lines[self.rows[row]])  # type: ignore[index]

    def where_row(self, row: int) -> str:
        if self._lines is None:
            self._build()
        return f"{self.block.path}:{self.first + self.rows[row]}"

    def where_invalid(self) -> str:
        if self._lines is None:
            self._build()
        line = self.first + self.invalid[0] if self.invalid else self.first
        return f"{self.block.path}:{line}"


@dataclass
class Parsed:
    """A block as pyarrow parsed it: typed (float labels and dense) or all text, and the
    field-count errors of its skipped lines."""

    block: Block
    table: pa.Table
    typed: bool
    invalid: List[str]
    skip: int


class DelimitedReader:
    """CSV / Criteo TSV blocks -> :class:`Rows`.

    Args:
        width: fields per line.
        labels / dense / sparse: ``(name, field index)`` of the label, dense and id columns.
        delimiter: the one-character field separator.
        ids: ``"csv"`` (integers, else hashed text) or ``"hex"`` (Criteo).
        header: the file's first line is a header (skipped).
        keep_dense / keep_sparse: the dense and id columns returned, in this order (default:
            all); the others are still checked, as the reference parser checks them.

    Example::

        >>> from torchrec_rankmixer.data.sources import MalformedCounter
        >>> reader = DelimitedReader(3, [("label", 0)], [("x", 1)], [("user", 2)], ",", "csv", header=True)
        >>> counter = MalformedCounter(1.0)
        >>> rows = reader.rows(Block("a.csv", 0, b"label,x,user\\n1,2.5,42\\n0,oops,7\\n"), counter)
        >>> rows.dense.tolist(), rows.sparse["user"][1].tolist(), counter.examples
        ([[2.5]], [42], ["a.csv:3: bad_dense (column 'x', value 'oops')"])
    """

    def __init__(self, width: int, labels: Sequence[Tuple[str, int]], dense: Sequence[Tuple[str, int]],
                 sparse: Sequence[Tuple[str, int]], delimiter: str, ids: str, header: bool,
                 keep_dense: Optional[Sequence[str]] = None, keep_sparse: Optional[Sequence[str]] = None) -> None:
        self.width, self.delimiter, self.header = width, delimiter, header
        self.labels, self.dense, self.sparse = list(labels), list(dense), list(sparse)
        self.keep_dense = list(keep_dense) if keep_dense is not None else [n for n, _ in dense]
        self.keep_sparse = list(keep_sparse) if keep_sparse is not None else [n for n, _ in sparse]
        self.names = [f"f{i}" for i in range(width)]
        self.id_type = pa.binary() if ids == "hex" else pa.string()
        self.id_column = hex_column if ids == "hex" else csv_id_column
        used = [i for _, i in [*self.labels, *self.dense, *self.sparse]]
        self.include = [self.names[i] for i in sorted(set(used))]

    def _read(self, data: "bytes | memoryview", skip: int, typed: bool, invalid: List[str]) -> pa.Table:
        num = pa.float64() if typed else pa.binary()
        types = {self.names[i]: num for _, i in [*self.labels, *self.dense]}
        types.update({self.names[i]: self.id_type for _, i in self.sparse})

        def on_invalid(row: "pacsv.InvalidRow") -> str:
            if row.text.strip():
                invalid.append(f"{row.actual_columns} fields, expected {self.width}")
            return "skip"

        return pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pacsv.ReadOptions(column_names=self.names, skip_rows=skip, block_size=1 << 20),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, quote_char=False,
                                             invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=self.include,
                                                 null_values=[""], strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False),
        )

    def parse(self, block: Block) -> "Parsed":
        """pyarrow's parse of ``block`` (the part that runs in pyarrow's threads)."""
        skip = 1 if self.header and block.offset == 0 else 0
        invalid: List[str] = []
        try:
            table, typed = self._read(block.data, skip, True, invalid), True
        except pa.ArrowInvalid:  # a token typed parsing rejects: convert through the reference
            invalid.clear()
            table, typed = self._read(block.data, skip, False, invalid), False
        return Parsed(block, table, typed, invalid, skip)

    def rows(self, block: Block, counter: "MalformedCounter") -> Optional[Rows]:
        """The valid rows of ``block`` (None when none); counts every row in ``counter``."""
        return self.convert(self.parse(block), counter)

    def convert(self, parsed: "Parsed", counter: "MalformedCounter") -> Optional[Rows]:
        """Rows of a parsed block: column conversions, malformed-row accounting."""
        block, table, typed, invalid, skip = parsed.block, parsed.table, parsed.typed, parsed.invalid, parsed.skip
        cols = {n: table.column(n) for n in table.column_names}  # chunked: no copy
        col = lambda i: cols[self.names[i]]  # noqa: E731
        if typed:
            labels = [typed_label(col(i)) for _, i in self.labels]
            dense = [typed_dense(col(i)) for _, i in self.dense]
        else:
            labels = [by_unique(col(i), parse_label, np.float64) for _, i in self.labels]
            dense = [by_unique(col(i), parse_dense, np.float64) for _, i in self.dense]
        sparse = [self.id_column(col(i)) for _, i in self.sparse]
        names = [n for n, _ in [*self.labels, *self.dense, *self.sparse]]
        lines = _Lines(block, self.delimiter.encode(), self.width, skip)
        n = table.num_rows
        bad, blank = np.zeros(n, bool), 0
        found: Dict[str, Tuple[int, int, str]] = {}  # reason -> (rows, first row, column)
        for name, c in zip(names, [*labels, *dense, *sparse]):  # the reference parse order
            if c.bad is None:
                continue
            new = c.bad & ~bad
            bad |= c.bad
            rows = np.flatnonzero(new)
            rows = [r for r in rows if lines.row_text(int(r)).strip()]  # a blank line is skipped, not malformed
            blank += int(new.sum()) - len(rows)
            if rows:
                k, first, column = found.get(c.reason, (0, rows[0], name))
                found[c.reason] = (k + len(rows), first, column) if first <= rows[0] else (k + len(rows), rows[0], name)
        counter.add_rows(n - blank + len(invalid))
        if invalid:
            counter.malformed("wrong_field_count", lines.where_invalid, len(invalid), invalid[0])
        field = dict([*self.labels, *self.dense, *self.sparse])
        for reason, (k, first, column) in found.items():
            value = lines.row_text(int(first)).split(self.delimiter)[field[column]]
            counter.malformed(reason, lambda r=int(first): lines.where_row(r), k, f"column {column!r}, value {value!r}")
        keep = ~bad
        if not keep.any():
            return None
        by_name = dict(zip([n for n, _ in self.dense], dense))
        ids = dict(zip([n for n, _ in self.sparse], sparse))
        return assemble(labels, [by_name[n] for n in self.keep_dense], {n: ids[n] for n in self.keep_sparse}, keep)


def assemble(labels: List[Column], dense: List[Column], sparse: Dict[str, Column], keep: np.ndarray) -> Rows:
    """:class:`Rows` of the ``keep`` [N] rows of converted columns (one id per present cell)."""
    every = bool(keep.all())
    pick = (lambda a: a) if every else (lambda a: a[keep])  # noqa: E731
    n = int(keep.sum())
    y = np.empty((n, len(labels)), np.float32)
    for j, c in enumerate(labels):
        y[:, j] = pick(c.values)
    x = np.empty((n, len(dense)), np.float32)
    for j, c in enumerate(dense):
        x[:, j] = pick(c.values)
    bags = {}
    for name, c in sparse.items():
        present = pick(c.present)
        values = c.present_values() if every else c.full()[keep][present]
        bags[name] = (torch.from_numpy(present.astype(np.int64)), torch.from_numpy(values))
    return Rows(torch.from_numpy(y), torch.from_numpy(x), bags)
