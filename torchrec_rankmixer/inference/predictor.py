"""Predictor: score in-memory batches or CSV/Parquet files with an exported model.

Inputs are checked in Python (see :mod:`torchrec_rankmixer.inference.inputs`) before
the artifact runs, so bad data gives a ValueError instead of garbage scores.
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from torchrec_rankmixer.inference.artifact import load_artifact
from torchrec_rankmixer.inference.inputs import InputSchema, columns_to_inputs
from torchrec_rankmixer.models.heads import task_scores
from torchrec_rankmixer.utils.files import atomic_write_with
from torchrec_rankmixer.utils.metrics import binary_auc, binary_logloss

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class Predictor:
    """Scores with an exported artifact (or an in-memory inference module).

    Args:
        artifact: path of ``model.pt2`` / ``model.ts`` or of the export directory.

    Example::

        >>> import tempfile
        >>> from torchrec_rankmixer.models.spec import ModelSpec, TableSpec
        >>> from torchrec_rankmixer.inference.export import export_model
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=1,
        ...                  dense_arch_layer_sizes=(8,), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 9, "num_tokens": 3, "num_layers": 1})
        >>> out = export_model(spec.build(), tempfile.mkdtemp(), artifact="torchscript")
        >>> p = Predictor(out.path)
        >>> p.predict({"a": [1, 2], "b": [[3, 4], []]}, dense=[[0.1], [0.2]]).shape
        torch.Size([2, 1])
        >>> p.predict({"a": [1, 2], "b": [3, 99]}, dense=[[0.1], [0.2]])
        Traceback (most recent call last):
        ...
        ValueError: feature 'b' has id 99 outside its table's range [0, 20)
    """

    def __init__(self, artifact: Union[str, os.PathLike]) -> None:
        loaded = load_artifact(artifact)
        self._init(loaded.module, loaded.metadata)

    @classmethod
    def from_module(
        cls, module: Callable[..., torch.Tensor], metadata: Mapping[str, Any]
    ) -> "Predictor":
        """A Predictor around an in-memory inference module (e.g. ``ExportResult.module``)."""
        self = cls.__new__(cls)
        self._init(module, metadata)
        return self

    def _init(self, module: Callable[..., torch.Tensor], metadata: Mapping[str, Any]) -> None:
        self.module = module
        self.metadata: Dict[str, Any] = dict(metadata)
        self.schema = InputSchema.from_metadata(metadata)

    @property
    def task(self) -> str:
        """``"ctr"`` or ``"esmm"`` (logits [B, 2] = CTR, CVR), from the artifact's metadata."""
        return str(self.metadata.get("task", "ctr"))

    @property
    def feature_names(self) -> List[str]:
        return list(self.schema.feature_names)

    @property
    def dense_feature_names(self) -> List[str]:
        return list(self.schema.dense_feature_names)

    # ------------------------------------------------------------------ in memory
    def run(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Call the artifact on already-checked tensors: logits [B, num_logits]."""
        with torch.inference_mode():
            return self.module(dense, values, lengths)

    def predict(self, sparse: Mapping[str, Any], dense: Optional[Any] = None) -> torch.Tensor:
        """Logits [B, num_logits] for ``{feature: ids}`` and dense rows [B, Dd] (checked)."""
        return self.run(*self.schema.to_tensors(sparse, dense))

    def probabilities(self, sparse: Mapping[str, Any], dense: Optional[Any] = None) -> Dict[str, torch.Tensor]:
        """Named probabilities [B] each: ``ctr``; for ESMM also ``cvr`` and ``ctcvr`` = ctr * cvr."""
        return task_scores(self.predict(sparse, dense), self.task)

    def predict_kjt(self, sparse: Any, dense: Optional[Any] = None) -> torch.Tensor:
        """Logits for a TorchRec KeyedJaggedTensor (keys in any order) + dense [B, Dd]."""
        return self.run(*self.schema.kjt_to_tensors(sparse, dense))

    # ------------------------------------------------------------------ tables
    def predict_table(
        self, table: Any, batch_size: int = 512, passthrough: Sequence[str] = ()
    ) -> Any:
        """Score a ``pyarrow.Table``; returns a table of passthrough columns + scores.

        Columns: every sparse feature, every dense feature, and the ``passthrough``
        columns (ids, labels: copied to the output). Any other column is an error.
        Scores: ``logit``/``probability`` (one logit); ESMM: ``logit_ctr``, ``logit_cvr``,
        ``probability_ctr``, ``probability_cvr``, ``probability_ctcvr``; any other
        multi-logit model: ``logit_<i>``/``probability_<i>``.
        """
        import pyarrow as pa

        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size ({batch_size!r}) must be a positive int")
        names = list(table.column_names)
        known = set(self.schema.feature_names) | set(self.schema.dense_feature_names)
        unknown = [c for c in names if c not in known and c not in passthrough]
        if unknown:
            raise ValueError(
                f"unknown columns {unknown}: not features of this model; pass them as "
                "passthrough columns (e.g. ids, labels) to keep them"
            )
        missing = [c for c in list(self.schema.feature_names) + self.dense_feature_names if c not in names]
        missing += [c for c in passthrough if c not in names]
        if missing:
            raise ValueError(f"missing columns {missing}")
        clash = sorted(set(passthrough) & set(self.score_columns))
        if clash:
            raise ValueError(f"passthrough columns {clash} have the names of score columns "
                             f"{self.score_columns}; rename them in the input")
        if table.num_rows == 0:
            raise ValueError("the table has no rows")
        logits = []
        for start in range(0, table.num_rows, batch_size):
            chunk = table.slice(start, batch_size)
            cols = {c: chunk.column(c).to_pylist() for c in known}
            sparse, dense = columns_to_inputs(self.schema, cols, first_row=start)
            try:
                logits.append(self.predict(sparse, dense))
            except ValueError as exc:
                raise ValueError(f"rows {start}..{start + chunk.num_rows - 1}: {exc}") from None
        scores = torch.cat(logits)  # (rows, num_logits)
        out = {c: table.column(c) for c in passthrough}
        n = scores.shape[1]
        if self.task == "esmm":
            for name, column in (("logit_ctr", scores[:, 0]), ("logit_cvr", scores[:, 1])):
                out[name] = pa.array(column.tolist(), type=pa.float32())
            for name, prob in task_scores(scores, "esmm").items():
                out[f"probability_{name}"] = pa.array(prob.tolist(), type=pa.float32())
            return pa.table(out)
        for i in range(n):
            suffix = "" if n == 1 else f"_{i}"
            out[f"logit{suffix}"] = pa.array(scores[:, i].tolist(), type=pa.float32())
            out[f"probability{suffix}"] = pa.array(torch.sigmoid(scores[:, i]).tolist(), type=pa.float32())
        return pa.table(out)

    @property
    def score_columns(self) -> List[str]:
        """The columns :meth:`predict_table` writes."""
        if self.task == "esmm":
            return ["logit_ctr", "logit_cvr", "probability_ctr", "probability_cvr", "probability_ctcvr"]
        n = int(self.metadata["num_logits"])
        return [f"{kind}{'' if n == 1 else f'_{i}'}" for i in range(n) for kind in ("logit", "probability")]

    def predict_file(
        self,
        path: Union[str, os.PathLike],
        output: Optional[Union[str, os.PathLike]] = None,
        batch_size: int = 512,
        passthrough: Sequence[str] = (),
        label_column: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Score a CSV or Parquet file; optionally write the scores and report AUC.

        Returns ``{"rows": n, "output": path or None, "auc"/"logloss": with a label}``.
        The output is written atomically and may not be the input file.
        """
        if output is not None and os.path.exists(output) and os.path.samefile(path, output):
            raise ValueError(f"--output {os.fspath(output)!r} is the input file; write the scores elsewhere")
        if output is not None:
            _suffix(output)  # before scoring: a bad output name fails fast
        keep = list(passthrough) + ([label_column] if label_column and label_column not in passthrough else [])
        result = self.predict_table(read_table(path), batch_size, keep)
        summary: Dict[str, Any] = {"rows": result.num_rows, "output": None}
        if label_column:
            labels = _labels(result.column(label_column).to_pylist(), label_column)
            first = next(c for c in ("logit", "logit_ctr", "logit_0") if c in result.column_names)
            logits = torch.tensor(result.column(first).to_pylist(), dtype=torch.float64)
            summary["auc"] = binary_auc(logits, labels)
            summary["logloss"] = binary_logloss(logits, labels)
        if output is not None:
            write_table(result, output)
            summary["output"] = os.fspath(output)
        return summary


def _labels(cells: List[Any], column: str) -> torch.Tensor:
    """A label column as 0/1 floats [N]; ValueError naming the row of an empty or other cell."""
    out = []
    for row, cell in enumerate(cells):
        text = cell.strip() if isinstance(cell, str) else None
        if text in ("0", "1", "0.0", "1.0"):
            out.append(float(text))  # type: ignore[arg-type]
        elif not isinstance(cell, bool) and isinstance(cell, (int, float)) and cell in (0, 1):
            out.append(float(cell))
        else:
            raise ValueError(f"label column {column!r} row {row}: {cell!r} is not 0 or 1")
    return torch.tensor(out, dtype=torch.float64)


def _suffix(path: Union[str, os.PathLike]) -> str:
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"file {os.fspath(path)!r} must end in one of {list(TABLE_SUFFIXES)}")
    return suffix


def read_table(path: Union[str, os.PathLike]) -> Any:
    """Read a CSV or Parquet file into a ``pyarrow.Table``.

    Example::

        >>> read_table("scores.json")
        Traceback (most recent call last):
        ...
        ValueError: file 'scores.json' must end in one of ['.csv', '.parquet', '.pq']
    """
    import pyarrow as pa

    suffix = _suffix(path)
    if not os.path.isfile(path):
        raise ValueError(f"input file {os.fspath(path)!r} does not exist")
    try:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            # only an empty cell is missing: "n/a" or "NaN" stay text, and are reported as such
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(null_values=[""], strings_can_be_null=True))
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowException, UnicodeDecodeError, OSError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"input file {os.fspath(path)!r} is not a readable {suffix[1:]} table: {first}") from e


def write_table(table: Any, path: Union[str, os.PathLike]) -> None:
    """Write a ``pyarrow.Table`` as CSV or Parquet (by suffix).

    Example::

        >>> import os, tempfile, pyarrow as pa
        >>> path = os.path.join(tempfile.mkdtemp(), "t.parquet")
        >>> write_table(pa.table({"logit": [0.5]}), path)
        >>> read_table(path).column("logit").to_pylist()
        [0.5]
    """
    suffix = _suffix(path)

    def write(tmp: str) -> None:
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, tmp)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)

    atomic_write_with(path, write)  # readers see the old file or the whole new one
