"""Line parsers for text formats: CSV with a header (field mapping by column name),
libsvm / libffm (field mapping by position or field index) and Criteo TSV.

Each parser turns one line into ``(labels, dense, sparse)`` or raises
:class:`MalformedRow` with a short reason; the source counts and reports those rows.
This is the readable reference path (``data.text_reader=reference``,
:func:`reference_block_rows`); the vectorised readers (``data/vectorised.py``) use the
per-field functions here (:func:`parse_label`, :func:`parse_dense`, :func:`csv_id`,
:func:`hex_id`) for every token they cannot convert in bulk, and are tested against it.
"""

import hashlib
import io
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from torchrec_rankmixer.data.blocks import Block
from torchrec_rankmixer.data.features import Rows, rows_from_lists

if TYPE_CHECKING:
    from torchrec_rankmixer.data.sources import MalformedCounter

ParsedRow = Tuple[List[float], List[float], Dict[str, List[int]]]
CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class MalformedRow(ValueError):
    """A row that cannot be parsed; ``reason`` is a short category for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def raw_id(token: str) -> int:
    """A raw int64 id for a categorical token: the integer itself, else a stable 64-bit
    hash of the text (blake2b), so string categories work too.

    Example::

        >>> raw_id("42"), raw_id("42") == raw_id(" 42"), raw_id("abc") == raw_id("abc")
        (42, True, True)
    """
    token = token.strip()
    try:
        value = int(token)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    except ValueError:
        pass
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little", signed=True)


def parse_label(text: str) -> float:
    """A label cell: 0 or 1 as Python's ``float`` reads it, else :class:`MalformedRow`.

    Example::

        >>> parse_label(" 1.0"), parse_dense(""), csv_id("  "), hex_id("0a")
        (1.0, 0.0, None, 10)
    """
    try:
        value = float(text)
    except ValueError:
        raise MalformedRow("bad_label", repr(text)) from None
    if value not in (0.0, 1.0):
        raise MalformedRow("bad_label", repr(text))
    return value


def parse_dense(text: str) -> float:
    """A dense cell: blank is 0.0, else a finite ``float``, else :class:`MalformedRow`."""
    if text.strip() == "":
        return 0.0  # missing dense value
    try:
        value = float(text)
    except ValueError:
        raise MalformedRow("bad_dense", repr(text)) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise MalformedRow("bad_dense", repr(text))
    return value


def csv_id(text: str) -> Optional[int]:
    """A CSV categorical cell: None (empty bag) when blank, else :func:`raw_id`."""
    return raw_id(text) if text.strip() else None


def hex_id(text: str) -> Optional[int]:
    """A Criteo categorical cell: None (empty bag) when empty, else the hex value as an
    int64 (``bad_categorical`` when not hex or outside int64)."""
    if text == "":
        return None
    try:
        value = int(text, 16)
    except ValueError:
        raise MalformedRow("bad_categorical", repr(text)) from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise MalformedRow("bad_categorical", f"{text!r} is outside int64")
    return value


def _bag(value: Optional[int]) -> List[int]:
    return [] if value is None else [value]


class CsvParser:
    """Delimited text with a header line naming the columns.

    Args:
        header: column names (from the file's first line, or given).
        label_columns: label column, plus the conversion label for ESMM.
        sparse_columns: categorical columns (one id each; empty cell = empty bag).
        dense_columns: numeric columns.
        delimiter: field separator.

    Example::

        >>> p = CsvParser(["label", "user", "item"], ["label"], ["user", "item"], [], ",")
        >>> p("1,204,4798")
        ([1.0], [], {'user': [204], 'item': [4798]})
    """

    def __init__(self, header: Sequence[str], label_columns: Sequence[str], sparse_columns: Sequence[str],
                 dense_columns: Sequence[str], delimiter: str) -> None:
        header = [h.strip() for h in header]
        missing = [c for c in [*label_columns, *sparse_columns, *dense_columns] if c not in header]
        if missing:
            raise ValueError(f"columns {missing} are not in the header {header}")
        col = {c: i for i, c in enumerate(header)}
        self.width, self.delimiter = len(header), delimiter
        self.labels = [col[c] for c in label_columns]
        self.sparse = [(c, col[c]) for c in sparse_columns]
        self.dense = [col[c] for c in dense_columns]

    def __call__(self, line: str) -> ParsedRow:
        parts = line.rstrip("\r\n").split(self.delimiter)
        if len(parts) != self.width:
            raise MalformedRow("wrong_field_count", f"{len(parts)} fields, expected {self.width}")
        labels = [parse_label(parts[i]) for i in self.labels]
        dense = [parse_dense(parts[i]) for i in self.dense]
        sparse = {c: _bag(csv_id(parts[i])) for c, i in self.sparse}
        return labels, dense, sparse


class LibsvmParser:
    """``label id:value id:value ...`` (libsvm) or ``label field:id:value ...`` (libffm).

    libsvm: the i-th token belongs to ``sparse_columns[i]`` (one token per field, as in
    Frappe/BARS); libffm: ``field`` indexes ``sparse_columns``. Values other than 1 are
    rejected (weighted ids are not supported); the id is the raw id.

    Example::

        >>> LibsvmParser(["user", "item"])("0 204:1 4798:1")
        ([0.0], [], {'user': [204], 'item': [4798]})
        >>> LibsvmParser(["user", "item"])("1 1:7:1 0:3:1 1:8:1")
        ([1.0], [], {'user': [3], 'item': [7, 8]})
    """

    def __init__(self, sparse_columns: Sequence[str]) -> None:
        self.fields = list(sparse_columns)

    def __call__(self, line: str) -> ParsedRow:
        tokens = line.split()
        if not tokens:
            raise MalformedRow("empty_line")
        labels = [parse_label(tokens[0])]
        sparse: Dict[str, List[int]] = {f: [] for f in self.fields}
        body = tokens[1:]
        positional = all(t.count(":") == 1 for t in body)
        if positional and len(body) != len(self.fields):
            raise MalformedRow("wrong_field_count", f"{len(body)} ids, expected {len(self.fields)}")
        for pos, tok in enumerate(body):
            parts = tok.split(":")
            if len(parts) not in (2, 3) or not all(parts):
                raise MalformedRow("bad_token", repr(tok))
            try:
                field = pos if len(parts) == 2 else int(parts[0])
                ident, value = int(parts[-2]), float(parts[-1])
            except ValueError:
                raise MalformedRow("bad_token", repr(tok)) from None
            if not 0 <= field < len(self.fields):
                raise MalformedRow("bad_field", f"field {field} of {len(self.fields)}")
            if value != 1.0:
                raise MalformedRow("weighted_id", repr(tok))
            if not INT64_MIN <= ident <= INT64_MAX:
                raise MalformedRow("bad_token", f"{tok!r}: id outside int64")
            sparse[self.fields[field]].append(ident)
        return labels, [], sparse


class CriteoParser:
    """Criteo TSV: label, 13 integer features (I1..I13), 26 hex categorical features
    (C1..C26); empty fields are missing (dense 0, empty bag).

    Example::

        >>> row = "1\\t" + "\\t".join(["5"] * 13) + "\\t" + "\\t".join(["68fd1e64"] + [""] * 25)
        >>> labels, dense, sparse = CriteoParser()(row)
        >>> labels, dense[0], sparse["C1"], sparse["C2"]
        ([1.0], 5.0, [1761418852], [])
    """

    def __init__(self, label2: bool = False) -> None:
        self.width = 1 + (1 if label2 else 0) + 13 + 26
        self.num_labels = 2 if label2 else 1

    def __call__(self, line: str) -> ParsedRow:
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != self.width:
            raise MalformedRow("wrong_field_count", f"{len(parts)} fields, expected {self.width}")
        k = self.num_labels
        labels = [parse_label(p) for p in parts[:k]]
        dense = [parse_dense(p) for p in parts[k:k + 13]]
        sparse = {name: _bag(hex_id(tok)) for name, tok in zip(CRITEO_SPARSE, parts[k + 13:])}
        return labels, dense, sparse


def make_parser(fmt: str, header: Optional[List[str]], label_columns: List[str], sparse: List[str],
                dense: List[str], delimiter: str):  # type: ignore[no-untyped-def]
    """The parser for ``data.format`` (``csv`` needs the header)."""
    if fmt == "csv":
        if header is None:
            raise ValueError("data.format='csv' needs a header line naming the columns")
        return CsvParser(header, label_columns, sparse, dense, delimiter)
    if fmt == "libsvm":
        return LibsvmParser(sparse)
    if fmt == "criteo":
        return CriteoParser(label2=len(label_columns) > 1)
    raise ValueError(f"data.format ({fmt!r}) is not a text format")


def reference_block_rows(block: Block, parser, skip_header: bool, counter: "MalformedCounter",  # type: ignore[no-untyped-def]
                         num_labels: int, sparse: List[str], num_dense: int,
                         dense_pick: Optional[List[int]] = None) -> Optional[Rows]:
    """The reference path: one :class:`~torchrec_rankmixer.data.blocks.Block` parsed line by
    line (universal newlines, as Python's text files read them); blank lines are skipped,
    malformed rows counted (``file:line: reason``) and dropped.

    Args:
        block: whole lines of a file.
        parser: a line parser of this module.
        skip_header: the block's first line is the CSV header.
        counter: a :class:`~torchrec_rankmixer.data.sources.MalformedCounter`.
        num_labels / sparse / num_dense: the row layout (sparse: feature names).
        dense_pick: the parser's dense values kept, in this order (default: all).

    Returns:
        The valid rows (None when there are none).
    """
    labels, dense, bags = [], [], []
    lines = io.TextIOWrapper(io.BytesIO(block.data), encoding="utf-8", newline=None)
    first: Optional[int] = None
    for i, line in enumerate(lines):
        if (skip_header and i == 0) or not line.strip():
            continue
        counter.add_rows(1)
        try:
            y, x, s = parser(line)
        except MalformedRow as e:
            if first is None:
                first = block.first_line_number()
            counter.malformed(e.reason, f"{block.path}:{first + i}", detail=e.detail)
            continue
        labels.append(y)
        dense.append(x if dense_pick is None else [x[j] for j in dense_pick])
        bags.append(s)
    if not labels:
        return None
    return rows_from_lists(labels, dense, {c: [b[c] for b in bags] for c in sparse}, num_labels, num_dense)
