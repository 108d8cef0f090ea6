"""The training loop behind ``rankmixer-train``: DMP + TrainPipelineSparseDist on any
number of processes, periodic evaluation and checkpoints, a run directory."""

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_rankmixer.modules.moe.statistics import collect_statistics
from torchrec_rankmixer.modules.moe import PerTokenSparseMoE
from torchrec_rankmixer.modules.moe.calibration import all_gather_rows, calibrate_moe_routers
from torchrec_rankmixer.data.sources import build_remapper, make_source
from torchrec_rankmixer.run_format import ID_REMAP_KEY, checkpoint_dir, latest_checkpoint, verify_checkpoint
from torchrec_rankmixer.train.build import TrainModule, model_spec
from torchrec_rankmixer.train.checkpoint import load_checkpoint, save_checkpoint
from torchrec_rankmixer.train.config import TrainConfig
from torchrec_rankmixer.train.distributed import (
    build_optimizer,
    init_distributed,
    set_dense_lr,
    shard_model,
)
from torchrec_rankmixer.train.evaluation import MetricAccumulator
from torchrec_rankmixer.train.evictions import reset_rows
from torchrec_rankmixer.train.rundir import RunDir, default_run_name


T = TypeVar("T")


@dataclass
class TrainSummary:
    """What a run produced (identical on every rank)."""

    run_dir: str
    step: int
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)
    train_loss: float = math.nan
    malformed: Dict[str, int] = field(default_factory=dict)


def _agree_on_name(cfg: TrainConfig) -> str:
    name = [cfg.run.name or default_run_name()]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(name, src=0)
    return name[0]


def _mean_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t.item())


def _agreed(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; a ValueError raised on rank 0 (which owns the run
    directory) is raised on every rank, so no rank waits for a collective that never comes."""
    error: List[Optional[str]] = [None]
    result: Optional[T] = None
    try:
        result = fn()
    except ValueError as e:
        if dist.get_rank() != 0:
            raise
        error = [str(e)]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise ValueError(error[0])
    return result  # type: ignore[return-value]


def _drain(pipeline: TrainPipelineSparseDist, it: Iterator, num: int, on_out=None) -> None:  # type: ignore[no-untyped-def]
    for _ in range(num):
        out = pipeline.progress(it)
        if on_out is not None:
            on_out(out)


class Trainer:
    """Owns the sharded model, the optimiser, the pipeline and the run directory.

    Args:
        cfg: validated settings.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.env = init_distributed(cfg.train.device)
        if cfg.train.num_threads is not None or self.env.device.type == "cpu":
            # CPU default: 1 intra-op thread per process. On a busy 2-core box OpenMP threads
            # spin-waiting on taken cores made steps ~25x slower (docs/training.md).
            torch.set_num_threads(cfg.train.num_threads or 1)
        precision = cfg.train.precision
        if precision == "bf16" and self.env.device.type != "cuda":
            raise ValueError("train.precision ('bf16') needs a GPU; bf16 autocast is GPU-only here")
        self.bf16 = precision == "bf16" or (precision == "auto" and self.env.device.type == "cuda")
        torch.manual_seed(cfg.train.seed)
        self.source = make_source(cfg.data, cfg.model.task == "esmm", self.env.rank, self.env.world_size)
        run_path = os.path.join(cfg.run.out_dir, _agree_on_name(cfg))
        self.run = _agreed(lambda: RunDir(run_path, cfg.run.tensorboard, self.env.is_main))
        try:  # the run directory is locked from here: release it if the set-up fails
            self.spec = model_spec(cfg, self.source)
            _agreed(lambda: self.run.claim(bool(cfg.run.resume), cfg.run.overwrite))
            if cfg.run.resume:
                _agreed(lambda: self.run.check_spec(self.spec))
            tables = self.source.table_configs(cfg.model.embedding_dim)
            # the id remapper runs on CPU in the data path: a gloo group (a side group on NCCL runs)
            group = None
            if cfg.data.id_transform == "managed_collision" and self.env.backend != "gloo":
                group = dist.new_group(backend="gloo")
            self.remapper = build_remapper(cfg.data, tables, group)
            self._evictions: List[Dict[str, torch.Tensor]] = []  # per remapped training batch
            self._evictions_done, self._evictions_base, self.evicted_rows = 0, 0, 0
            mc = cfg.data.managed_collision
            self._row_init = {t.name: t.init_fn for t in tables} if mc.evicted_row_init == "table_init" else None
            # tables on meta: DistributedModelParallel materialises them sharded
            model = self.spec.build(self.env.device, cfg.train.validate_inputs, table_device=torch.device("meta"))
            if cfg.train.compile:
                model.compile_dense_path()  # the sparse arch, sharded below, stays eager
            module = TrainModule(model, cfg.model.task, cfg.model.cvr_loss_weight, self.source.user_feature)
            self.model = shard_model(module, cfg, self.env)
            self.optimizer = build_optimizer(self.model, cfg.optim)
            self.pipeline = TrainPipelineSparseDist(
                self.model, self.optimizer, self.env.device, execute_all_batches=True
            )
            self.step, self.cursor = 0, 0
            if cfg.run.resume:
                self.resume(cfg.run.resume)
            self.run.write_settings(cfg, self.spec)  # after a resume has loaded, before the first step
        except BaseException:
            self.run.close()
            raise

    # ------------------------------------------------------------------ state
    def _resume_path(self, where: str) -> List[str]:
        """Rank 0 picks the checkpoint: ``"latest"`` is the newest that verifies against
        its manifest (damaged ones are skipped with a warning); a named one must verify."""
        if where != "latest":
            verify_checkpoint(where)
            return [where]
        path = latest_checkpoint(self.run.checkpoints) if self.env.is_main else ""
        if path is None:
            raise ValueError(f"run.resume ('latest'): no complete, undamaged checkpoint under {self.run.checkpoints!r}")
        return [path]

    def resume(self, where: str) -> None:
        """Load ``where`` (a checkpoint directory or ``"latest"`` in this run's directory)."""
        chosen = _agreed(lambda: self._resume_path(where))
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(chosen, src=0)
        path = chosen[0]
        progress = load_checkpoint(path, self.model, self.optimizer, self._extra_state())
        self.step, self.cursor = int(progress["step"]), int(progress["cursor"])

    def save(self) -> str:
        path = checkpoint_dir(self.run.checkpoints, self.step)
        save_checkpoint(path, self.model, self.optimizer, {"step": self.step, "cursor": self.cursor},
                        self._extra_state())
        return path

    def _extra_state(self) -> Optional[Dict[str, torch.nn.Module]]:
        return {ID_REMAP_KEY: self.remapper} if self.remapper is not None else None

    def _remapped(self, batches: Iterator[Batch], training: bool) -> Iterator[Batch]:
        """``batches`` through the id remapper (profiling/evicting when ``training``; all
        ranks consume the same number of batches, so its all-gathers stay in step). In
        training, each batch's evictions are queued in batch order (see :meth:`_reset_evicted`)."""
        if self.remapper is None:
            return batches
        remapper = self.remapper.train(training)
        if not training:
            return map(remapper.remap_batch, batches)
        self._evictions, self._evictions_done, self._evictions_base = [], 0, self.step

        def remap_and_record() -> Iterator[Batch]:
            for batch in batches:
                out = remapper.remap_batch(batch)
                self._evictions.append(remapper.last_evictions)
                yield out

        it = remap_and_record()
        first = next(it, None)  # remapped now, so its evictions are known before its forward
        return it if first is None else itertools.chain([first], it)

    def _reset_evicted(self, upto: int) -> None:
        """Before the forward of this segment's batch ``upto``: reset the rows that the remap
        of batches <= ``upto`` gave to new ids (TorchRec's sharded MC-EBC resets them before
        the lookup of the batch that evicted them; the pipeline has remapped batch ``upto``
        already, one or two batches ahead of its forward)."""
        if self.remapper is None:
            return
        while self._evictions_done <= upto and self._evictions_done < len(self._evictions):
            evicted = self._evictions[self._evictions_done]
            batch_index = self._evictions_base + self._evictions_done  # global: same on every rank
            self._evictions_done += 1
            self.evicted_rows += sum(int(r.numel()) for r in evicted.values())
            if evicted and self.cfg.data.managed_collision.reset_evicted_rows:
                seed = self.cfg.train.seed * 1_000_003 + batch_index
                reset_rows(self.model, self.optimizer, evicted, self._row_init, seed)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> Dict[str, float]:
        """Metrics on the held-out set, computed over all ranks' predictions."""
        acc = MetricAccumulator(self.cfg.model.task)
        batches = list(self._remapped(self.source.eval_batch_iter(self.env.rank, self.env.world_size), False))
        if not batches:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            _drain(self.pipeline, iter(batches), len(batches),
                   lambda out: acc.update(out.logits, out.labels, out.users))
        self.model.train()
        return acc.compute()

    def calibrate_moe(self) -> List[Dict[str, float]]:
        """Calibrate the Sparse-MoE h_infer router biases to the target active ratio.

        Runs after the last training step, before the final evaluation and checkpoint
        (docs/moe.md, "calibration"): each rank runs ``train.calibrate_moe_batches`` of
        its next, not yet trained on, training batches in eval mode; the router logits
        are all-gathered, so every rank applies the same bias shift and the replicated
        router stays identical across ranks. No-op without ReLU-routed MoE layers or
        with ``train.calibrate_moe_batches=0``. Logs one record (``moe_calib_*``).
        """
        num = self.cfg.train.calibrate_moe_batches
        moes = [m for m in self.model.modules() if isinstance(m, PerTokenSparseMoE) and m.router != "topk"]
        if num == 0 or not moes:
            return []
        env = self.env
        # read-only remap (no profiling/eviction) when ids are managed-collision remapped
        batches = list(self._remapped(self.source.train_batches(self.cursor, env.rank, env.world_size, num), False))

        def run() -> None:
            with self._autocast():
                _drain(self.pipeline, iter(batches), len(batches))

        report = calibrate_moe_routers(self.model, run, gather=all_gather_rows)
        self.model.train()
        record: Dict[str, float] = {"step": self.step}
        for i, r in enumerate(report):
            record.update({f"moe_calib_{i}_{k}": v for k, v in r.items()})
        self.run.log(record)
        return report

    # ------------------------------------------------------------------ train
    def _boundaries(self, total: int) -> List[int]:
        t = self.cfg.train
        marks = {total}
        for every in (t.eval_every, self.cfg.run.checkpoint_every):
            if every > 0:
                marks.update(range(every, total, every))
        return sorted(m for m in marks if m > self.step)

    def fit(self) -> TrainSummary:
        """Train to ``train.steps`` (from the resumed step), evaluating and checkpointing
        on schedule; returns the final metrics."""
        cfg, env = self.cfg, self.env
        total, W = cfg.train.steps, env.world_size
        start_time = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (env.is_main and cfg.train.progress_bar))
        running, count = torch.zeros((), dtype=torch.float64, device=env.device), 0  # no per-step sync
        first_bad = torch.full((), -1, dtype=torch.int64, device=env.device)  # first non-finite step
        last_loss, metrics = math.nan, {}
        self.model.train()
        try:
            for end in self._boundaries(total):
                n = end - self.step
                it = self._remapped(self.source.train_batches(self.cursor, env.rank, W, n), True)
                for k in range(n):
                    self._reset_evicted(k)
                    lr = set_dense_lr(self.optimizer, cfg.optim, self.step, total)
                    with self._autocast():
                        out = self.pipeline.progress(it)
                    self.step += 1
                    self.cursor += W
                    loss = out.losses["loss"].detach()
                    first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), self.step, first_bad)
                    running += loss.to(torch.float64)
                    count += 1
                    if self.step % cfg.train.log_every == 0 or self.step == total:
                        self._stop_if_not_finite(first_bad, lr)
                        last_loss = _mean_over_ranks(float(running) / count, env.device)
                        record = {"step": self.step, "train_loss": last_loss, "lr": lr}
                        record.update({f"train_{k}": float(v) for k, v in out.losses.items() if k != "loss"})
                        record.update(self._window_statistics())
                        if self.remapper is not None:
                            record["id_remap_evicted_rows"] = self.evicted_rows  # since start/resume
                        self.run.log(record)
                        running, count = torch.zeros_like(running), 0
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                    bar.update(1)
                self._stop_if_not_finite(first_bad, lr)  # never checkpoint a diverged model
                if self.step == total:
                    self.calibrate_moe()
                if (cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or self.step == total:
                    metrics = self.evaluate()
                    if metrics:
                        self.run.log({"step": self.step, **{f"eval_{k}": v for k, v in metrics.items()}})
                every = cfg.run.checkpoint_every
                if (every and self.step % every == 0) or (self.step == total and (every or cfg.run.save_final)):
                    self.save()
        finally:
            bar.close()
            self.source.close()  # stops the background reader of file sources
            if sys.exc_info()[0] is not None:
                self.run.close()
        if cfg.run.plots:
            self.run.plot()
        self.run.close()
        return TrainSummary(
            run_dir=self.run.path, step=self.step, seconds=time.perf_counter() - start_time,
            metrics=metrics, train_loss=last_loss, malformed=self._malformed_over_ranks(),
        )

    def _stop_if_not_finite(self, first_bad: torch.Tensor, lr: float) -> None:
        """Stop the run (ValueError on every rank) when any rank's training loss was NaN or
        inf at some step; no checkpoint is written after it, so the last one stays good."""
        if dist.get_world_size() > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MAX)
        step = int(first_bad)
        if step < 0:
            return
        kept = latest_checkpoint(self.run.checkpoints) if self.env.is_main else None
        raise ValueError(
            f"the training loss is not finite (NaN or inf) at step {step} (dense lr {lr:g}); the run "
            f"stopped, last good checkpoint: {kept or 'none'}. Lower optim.lr / optim.embedding_lr or "
            "set optim.grad_clip_norm, then resume (run.resume=latest) or start over"
        )

    def _window_statistics(self) -> Dict[str, float]:
        """``statistics()`` of the model's modules (e.g. MoE routing) since the last log,
        keyed by module path inside DLRM_RankMixer; then a new window starts."""
        inner = self.model.module.model  # DMP -> TrainModule -> DLRM_RankMixer
        stats = collect_statistics(inner)
        for module in inner.modules():
            reset = getattr(module, "reset_statistics", None)
            if callable(reset):
                reset()
        return stats

    def _malformed_over_ranks(self) -> Dict[str, int]:
        local = self.source.malformed_report()
        if dist.get_world_size() == 1:
            return local
        parts: List = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        total: Dict[str, int] = {}
        for part in parts:
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        return total


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
    rows += [(f"eval_{k}", f"{v:.4f}") for k, v in summary.metrics.items()]
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
