"""Parquet and ORC via pyarrow: scalar or ``list<int64>`` id columns (the RecIS layout),
numeric dense columns, label columns. Vectorised: no per-row Python.

A row is malformed (counted, then dropped) when a label is null or not 0/1, a dense value
is NaN/inf, or an id list holds a null. A null id list (or null scalar id) is an empty bag.
"""

from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.orc as orc
import pyarrow.parquet as pq
import torch

from torchrec_rankmixer.data.features import Rows

if TYPE_CHECKING:
    from torchrec_rankmixer.data.sources import MalformedCounter

READ_CHUNK = 65536


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _bad_rows(batch: pa.RecordBatch, labels: List[str], dense: List[str], sparse: List[str]) -> Dict[str, pa.Array]:
    """Reason -> boolean mask of malformed rows."""
    n = batch.num_rows
    ok = pa.array([False] * n)
    bad: Dict[str, pa.Array] = {}
    for c in labels:
        col = batch.column(c)
        null = pc.is_null(col)
        valid01 = pc.or_(pc.equal(col, 0), pc.equal(col, 1))
        bad["null_label"] = pc.or_(bad.get("null_label", ok), null)
        bad["bad_label"] = pc.or_(bad.get("bad_label", ok), pc.and_(pc.invert(null), pc.invert(valid01)))
    for c in dense:
        col = pc.cast(batch.column(c), pa.float64())
        finite = pc.fill_null(pc.is_finite(col), True)
        bad["bad_dense"] = pc.or_(bad.get("bad_dense", ok), pc.invert(finite))
    for c in sparse:
        col = batch.column(c)
        if _is_list(col.type):
            flat_null = pc.is_null(pc.list_flatten(col))
            parent = pc.list_parent_indices(col)
            rows_with_null = pc.filter(parent, flat_null)
            mask = pc.is_in(pa.array(range(n)), value_set=rows_with_null)
            bad["null_id"] = pc.or_(bad.get("null_id", ok), mask)
    return {k: pc.fill_null(v, True) for k, v in bad.items()}


def _jagged(col: pa.Array) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lengths [N], values [sum]) int64 of a scalar or list id column."""
    if _is_list(col.type):
        lengths = pc.fill_null(pc.list_value_length(col), 0)
        values = pc.list_flatten(col)
    else:
        lengths = pc.cast(pc.is_valid(col), pa.int64())
        values = pc.drop_null(col)
    values = pc.cast(values, pa.int64())
    return (torch.from_numpy(lengths.to_numpy(zero_copy_only=False).astype("int64")),
            torch.from_numpy(values.to_numpy(zero_copy_only=False).astype("int64")))


def _units(path: str, fmt: str, columns: List[str]) -> Tuple[List[str], List[Callable[[], Iterator[pa.RecordBatch]]]]:
    """(the file's column names, one reader per row group / stripe)."""
    if fmt == "parquet":
        pf = pq.ParquetFile(path)
        return pf.schema_arrow.names, [
            (lambda i=i: pf.iter_batches(READ_CHUNK, row_groups=[i], columns=columns)) for i in range(pf.num_row_groups)]
    of = orc.ORCFile(path)
    return of.schema.names, [(lambda i=i: iter([of.read_stripe(i, columns=columns)])) for i in range(of.nstripes)]


def _check_types(path: str, fmt: str, labels: List[str], dense: List[str], sparse: List[str]) -> None:
    """Labels and dense columns must be numeric, id columns integers or lists of integers:
    ValueError naming the file, the column and its type otherwise."""
    schema = pq.ParquetFile(path).schema_arrow if fmt == "parquet" else orc.ORCFile(path).schema
    numeric = lambda t: pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)  # noqa: E731
    for kind, names, ok, want in (
        ("label", labels, numeric, "numbers (0/1)"),
        ("dense", dense, numeric, "numbers"),
        ("sparse", sparse, lambda t: pa.types.is_integer(t) or (_is_list(t) and pa.types.is_integer(t.value_type)),
         "integer ids or lists of integer ids (hash text ids before writing the file)"),
    ):
        for c in names:
            t = schema.field(c).type
            if not ok(t):
                raise ValueError(f"{fmt} file {path!r}: {kind} column {c!r} has type {t}; it must hold {want}")


def _part_batches(path: str, fmt: str, columns: List[str], part: int, parts: int) -> Iterator[pa.RecordBatch]:
    names, units = _units(path, fmt, [])
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: columns {missing} are not in the file's schema {names}")
    names, units = _units(path, fmt, columns)
    if len(units) >= parts:  # whole row groups / stripes per rank
        for unit in units[part * len(units) // parts:(part + 1) * len(units) // parts]:
            yield from unit()
        return
    total = pq.ParquetFile(path).metadata.num_rows if fmt == "parquet" else orc.ORCFile(path).nrows
    lo, hi, seen = total * part // parts, total * (part + 1) // parts, 0  # fewer units than ranks: a row range
    for unit in units:
        for batch in unit():
            a, b = max(lo - seen, 0), min(hi - seen, len(batch))
            if parts == 1:
                yield batch
            elif a < b:
                yield batch.slice(a, b - a)
            seen += len(batch)


def read_columnar(
    path: str, fmt: str, labels: List[str], dense: List[str], sparse: List[str],
    counter: "MalformedCounter", part: int = 0, parts: int = 1,
) -> Iterator[Rows]:
    """Blocks of valid rows of part ``part`` of ``parts`` of one Parquet/ORC file; every
    row read is counted in ``counter`` and malformed rows are reported to it (by reason)
    and dropped.

    Args:
        path: the file.
        fmt: ``"parquet"`` or ``"orc"``.
        labels / dense / sparse: column names.
        counter: a :class:`~torchrec_rankmixer.data.sources.MalformedCounter`.
        part / parts: this rank's share: row groups (Parquet) or stripes (ORC)
            ``[part * G // parts, (part + 1) * G // parts)``, or that range of rows when
            the file has fewer than ``parts`` of them.
    """
    _check_types(path, fmt, labels, dense, sparse)
    for batch in _part_batches(path, fmt, [*labels, *dense, *sparse], part, parts):
        if batch.num_rows == 0:
            continue
        counter.add_rows(batch.num_rows)
        bad = _bad_rows(batch, labels, dense, sparse)
        any_bad = pa.array([False] * batch.num_rows)
        for reason, mask in bad.items():
            n_bad = pc.sum(pc.cast(pc.and_(mask, pc.invert(any_bad)), pa.int64())).as_py() or 0
            if n_bad:
                counter.malformed(reason, path, n_bad)
            any_bad = pc.or_(any_bad, mask)
        batch = batch.filter(pc.invert(any_bad))
        if batch.num_rows == 0:
            continue
        y = torch.stack([torch.from_numpy(pc.cast(batch.column(c), pa.float32()).to_numpy(zero_copy_only=False).copy()) for c in labels], 1)
        if dense:
            x = torch.stack([torch.from_numpy(pc.fill_null(pc.cast(batch.column(c), pa.float32()), 0.0).to_numpy(zero_copy_only=False).copy()) for c in dense], 1)
        else:
            x = torch.zeros(batch.num_rows, 0)
        yield Rows(y, x, {c: _jagged(batch.column(c)) for c in sparse})
