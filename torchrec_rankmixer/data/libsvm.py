"""Vectorised libsvm / libffm reader: a :class:`~torchrec_rankmixer.data.blocks.Block` of
``label id:1 ...`` or ``label field:id:1 ...`` lines -> :class:`Rows`.

Lines are split and converted with pyarrow compute kernels. A line is taken in bulk only
when every check of the reference parser (:class:`~torchrec_rankmixer.data.text.LibsvmParser`)
provably passes (ASCII, one token layout, decimal ids and fields, values equal to 1,
the positional token count); any other line goes through the reference parser itself, so
both paths give the same rows, ids and malformed reasons.
"""

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from torchrec_rankmixer.data.blocks import Block
from torchrec_rankmixer.data.features import Rows, rows_from_lists
from torchrec_rankmixer.data.text import LibsvmParser, MalformedRow, parse_label, reference_block_rows
from torchrec_rankmixer.data.vectorised import by_unique

if TYPE_CHECKING:
    from torchrec_rankmixer.data.sources import MalformedCounter


def _is_one(text: str) -> Optional[float]:
    try:
        return 1.0 if float(text) == 1.0 else None
    except ValueError:
        return None


def _int_column(col: pa.Array) -> "tuple[np.ndarray, np.ndarray]":
    """(values int64, ok bool) of decimal tokens; other tokens are not ok."""
    ok = pc.fill_null(pc.ascii_is_decimal(col), False).to_numpy(zero_copy_only=False).copy()
    values = np.zeros(len(col), np.int64)
    if ok.any():
        try:
            values[ok] = pc.cast(col.filter(pa.array(ok)), pa.int64()).to_numpy()
        except (pa.ArrowInvalid, OverflowError):
            ok[:] = False
    return values, ok


class LibsvmReader:
    """libsvm / libffm blocks -> :class:`Rows` (labels [N, 1], no dense, one bag per field).

    Args:
        fields: ``data.sparse_columns``: position i (libsvm) or field index i (libffm).

    Example::

        >>> from torchrec_rankmixer.data.sources import MalformedCounter
        >>> rows = LibsvmReader(["u", "i"]).rows(Block("x", 0, b"1 5:1 7:1\\n0 1:8:1 0:3:1\\n"), MalformedCounter(0))
        >>> rows.labels[:, 0].tolist(), rows.sparse["u"][1].tolist(), rows.sparse["i"][1].tolist()
        ([1.0, 0.0], [5, 3], [7, 8])
    """

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = list(fields)
        self.parser = LibsvmParser(self.fields)

    def rows(self, block: Block, counter: "MalformedCounter") -> Optional[Rows]:
        """The valid rows of ``block`` (None when none); counts every row in ``counter``."""
        b = np.frombuffer(block.data, np.uint8)
        breaks = np.flatnonzero(b == 10)
        cr = np.flatnonzero(b == 13)
        if len(cr) and bool((b[np.minimum(cr + 1, len(b) - 1)] != 10).any() or cr[-1] == len(b) - 1):
            return self._reference(block, counter)  # a lone CR ends a line for Python: rare, exact
        ends = np.append(breaks + 1, len(b)) if (not len(breaks) or breaks[-1] != len(b) - 1) else breaks + 1
        offsets = np.concatenate([[0], ends]).astype(np.int32)
        n_lines = len(offsets) - 1
        lines = pa.Array.from_buffers(pa.binary(), n_lines, [None, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(block.data)])
        special = np.flatnonzero((b >= 0x80) | ((b >= 0x1C) & (b <= 0x1F)))  # non-ASCII, or whitespace only Python splits on
        slow = np.zeros(n_lines, bool)
        slow[np.searchsorted(offsets, special, side="right") - 1] = True
        text = lines  # lines left to the reference parser are blanked here (the rest is ASCII)
        if slow.any():
            text = pc.if_else(pa.array(slow), pa.scalar(b"", pa.binary()), lines)
        text = pc.ascii_trim_whitespace(text.cast(pa.string()))  # as str.split(): no empty end tokens
        tokens = pc.ascii_split_whitespace(text)
        ntok = np.where(pc.binary_length(text).to_numpy(zero_copy_only=False) == 0, 0,
                        pc.list_value_length(tokens).to_numpy(zero_copy_only=False))
        fast = (ntok > 0) & ~slow
        line_of = np.flatnonzero(fast)
        first = pc.list_element(tokens.filter(pa.array(fast)), 0) if fast.any() else pa.array([], pa.string())
        label = by_unique(first, parse_label, np.float64) if len(first) else None
        ok = np.ones(len(line_of), bool) if label is None or label.bad is None else ~label.bad
        body = pc.list_slice(tokens.filter(pa.array(fast)), 1) if fast.any() else None
        nf = len(self.fields)
        if body is not None and len(line_of):
            parent = pc.list_parent_indices(body).to_numpy(zero_copy_only=False)
            flat = pc.list_flatten(body)
            parts = pc.split_pattern(flat, ":")
            arity = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
            poff = parts.offsets.to_numpy()
            pstart = poff[:-1] - poff[0]
            pflat = pc.list_flatten(parts)
            last = max(len(pflat) - 1, 0)
            count = np.bincount(parent, minlength=len(line_of))
            two = np.bincount(parent, weights=arity == 2, minlength=len(line_of)).astype(np.int64)
            three = np.bincount(parent, weights=arity == 3, minlength=len(line_of)).astype(np.int64)
            ok &= ((two == count) & (count == nf)) | ((three == count) & (count > 0)) | (count == 0) & (nf == 0)
            good_tok = (arity == 2) | (arity == 3)
            a = np.where(good_tok, arity, 2)
            ids, id_ok = _int_column(pflat.take(pa.array(np.minimum(pstart + a - 2, last))))
            one = by_unique(pflat.take(pa.array(np.minimum(pstart + a - 1, last))), _is_one, np.float64).present
            field, field_ok = _int_column(pflat.take(pa.array(pstart)))
            position = np.arange(len(parent)) - np.repeat(np.cumsum(count) - count, count)
            field = np.where(arity == 3, field, position)
            field_ok = np.where(arity == 3, field_ok & (field >= 0) & (field < nf), True)
            tok_ok = good_tok & id_ok & one & field_ok
            ok &= np.bincount(parent, weights=~tok_ok, minlength=len(line_of)) == 0
        else:
            ok = ok & (nf == 0)
        fast_rows = self._fast_rows(ok, label, parent, field, ids) if ok.any() else None
        ref_lines = np.sort(np.concatenate([line_of[~ok], np.flatnonzero(slow)]))
        ref_rows, ref_idx = self._reference_lines(block, lines, ref_lines, counter)
        counter.add_rows(int(ok.sum()))
        return _merge(fast_rows, line_of[ok], ref_rows, ref_idx)

    def _fast_rows(self, ok: np.ndarray, label, parent: np.ndarray, field: np.ndarray,  # type: ignore[no-untyped-def]
                   ids: np.ndarray) -> Rows:
        rows_map = np.cumsum(ok) - 1  # line (among fast lines) -> row index
        keep_tok = ok[parent]
        row = rows_map[parent[keep_tok]]
        f, v = field[keep_tok], ids[keep_tok]
        n, nf = int(ok.sum()), len(self.fields)
        if len(f) == n * nf and np.array_equal(f, np.tile(np.arange(nf), n)):  # libsvm: one id per field, in order
            values, lengths = v.reshape(n, nf).T.reshape(-1), np.ones((nf, n), np.int64)
        else:  # libffm: group by field, keeping each row's order
            key = f * n + row
            values = v[np.argsort(key, kind="stable")]
            lengths = np.bincount(key, minlength=nf * n).reshape(nf, n)
        ends = np.cumsum(lengths.sum(1))
        sparse = {}
        for j, name in enumerate(self.fields):
            lo = int(ends[j - 1]) if j else 0
            sparse[name] = (torch.from_numpy(lengths[j].astype(np.int64)), torch.from_numpy(values[lo:int(ends[j])].copy()))
        y = label.values[ok].astype(np.float32).reshape(n, 1)
        return Rows(torch.from_numpy(y), torch.zeros(n, 0), sparse)

    def _reference_lines(self, block: Block, lines: pa.Array, which: np.ndarray,
                         counter: "MalformedCounter") -> "tuple[Optional[Rows], np.ndarray]":
        labels, bags, kept = [], [], []
        first: Optional[int] = None
        for i in which.tolist():
            line = lines[i].as_py().decode("utf-8", "surrogateescape")
            if not line.strip():
                continue
            counter.add_rows(1)
            try:
                y, _, s = self.parser(line)
            except MalformedRow as e:
                first = block.first_line_number() if first is None else first
                counter.malformed(e.reason, f"{block.path}:{first + i}", detail=e.detail)
                continue
            labels.append(y)
            bags.append(s)
            kept.append(i)
        if not labels:
            return None, np.zeros(0, np.int64)
        rows = rows_from_lists(labels, [[] for _ in labels], {f: [b[f] for b in bags] for f in self.fields}, 1, 0)
        return rows, np.array(kept, np.int64)

    def _reference(self, block: Block, counter: "MalformedCounter") -> Optional[Rows]:
        return reference_block_rows(block, self.parser, False, counter, 1, self.fields, 0)


def _merge(a: Optional[Rows], a_lines: np.ndarray, b: Optional[Rows], b_lines: np.ndarray) -> Optional[Rows]:
    """Rows of two sets in line order."""
    if a is None or b is None:
        return a if b is None else b
    order = torch.from_numpy(np.argsort(np.concatenate([a_lines, b_lines]), kind="stable"))
    return Rows.cat([a, b]).take(order)
