"""What a run reports at the end: :class:`TrainSummary` and the table the CLI prints."""

import math
from dataclasses import dataclass, field
from typing import Dict


@dataclass
class TrainSummary:
    """What a run produced (identical on every rank).

    Attributes:
        run_dir: the run directory.
        step: the last training step.
        seconds: wall time of :meth:`Trainer.fit`.
        metrics: the final validation metrics (of the restored best step with
            ``train.restore_best``).
        test_metrics: metrics on the test set (``data.test_files`` / ``data.test_batches``),
            empty without one.
        train_loss: the mean training loss of the last log window.
        malformed: rows read and malformed rows by reason (file sources).
        best_step: the step of the best validation metric (-1 without validation).
    """

    run_dir: str
    step: int
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)
    train_loss: float = math.nan
    malformed: Dict[str, int] = field(default_factory=dict)
    test_metrics: Dict[str, float] = field(default_factory=dict)
    best_step: int = -1


def format_table(summary: TrainSummary) -> str:
    """The final metrics as an aligned two-column table.

    Example::

        >>> print(format_table(TrainSummary("runs/x", 10, 1.5, {"ctr_auc": 0.75}, 0.5)))
        metric          value
        --------------  -------
        steps           10
        train_loss      0.5000
        eval_ctr_auc    0.7500
        seconds         1.5
        run_dir         runs/x
    """
    rows = [("steps", str(summary.step)), ("train_loss", f"{summary.train_loss:.4f}")]
    if summary.best_step >= 0:
        rows.append(("best_step", str(summary.best_step)))
    rows += [(f"eval_{k}", f"{v:.4f}") for k, v in summary.metrics.items()]
    rows += [(f"test_{k}", f"{v:.4f}") for k, v in summary.test_metrics.items()]
    m = summary.malformed
    if m:
        rows += [("rows_read", str(m.get("rows", 0))), ("malformed_rows", str(m.get("malformed", 0)))]
        rows += [(f"malformed_{k}", str(v)) for k, v in m.items() if k not in ("rows", "malformed")]
    rows += [("seconds", f"{summary.seconds:.1f}"), ("run_dir", summary.run_dir)]
    w0 = max(14, max(len(r[0]) for r in rows))
    w1 = max(7, max(len(r[1]) for r in rows))
    lines = [f"{'metric':<{w0}}  value", f"{'-' * w0}  {'-' * w1}"]
    lines += [f"{k:<{w0}}  {v}" for k, v in rows]
    return "\n".join(lines)
