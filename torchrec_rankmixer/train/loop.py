"""The training loop behind ``rankmixer-train``: DMP + TrainPipelineSparseDist on any
number of processes, periodic evaluation and checkpoints, validation-driven early stopping
and learning-rate decay, a final test evaluation, a run directory."""

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_rankmixer.data.sources import build_remapper, make_source
from torchrec_rankmixer.modules.moe.calibration import all_gather_rows, calibrate_moe_routers
from torchrec_rankmixer.modules.moe.dtsi import moe_layers
from torchrec_rankmixer.modules.moe.statistics import collect_statistics, reset_statistics
from torchrec_rankmixer.run_format import (
    ID_REMAP_KEY,
    checkpoint_dir,
    latest_checkpoint,
    verify_checkpoint,
    write_best,
    write_summary,
)
from torchrec_rankmixer.train.build import TrainModule, model_spec
from torchrec_rankmixer.train.checkpoint import load_checkpoint, save_checkpoint
from torchrec_rankmixer.train.config import TrainConfig
from torchrec_rankmixer.train.distributed import (
    agreed,
    broadcast_value,
    build_optimizer,
    init_distributed,
    mean_over_ranks,
    set_dense_lr,
    shard_model,
    sum_counts_over_ranks,
    sync_batch_norm_stats,
)
from torchrec_rankmixer.train.evaluation import MetricAccumulator
from torchrec_rankmixer.train.evictions import RemapFeeder
from torchrec_rankmixer.train.rundir import RunDir, default_run_name
from torchrec_rankmixer.train.summary import TrainSummary, format_table
from torchrec_rankmixer.train.validation import ValidationState
from torchrec_rankmixer.utils.malloc import keep_freed_memory

__all__ = ["Trainer", "TrainSummary", "format_table"]

VALIDATION_METRIC = "ctr_auc"  # the first task's AUC drives early stopping and the best step


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
        if cfg.train.keep_freed_memory and self.env.device.type == "cpu":
            keep_freed_memory()  # large activations reused, not page-faulted anew each step
        precision = cfg.train.precision
        if precision == "bf16" and self.env.device.type != "cuda":
            raise ValueError("train.precision ('bf16') needs a GPU; bf16 autocast is GPU-only here")
        self.bf16 = precision == "bf16" or (precision == "auto" and self.env.device.type == "cuda")
        torch.manual_seed(cfg.train.seed)
        self.source = make_source(cfg.data, cfg.model.task == "esmm", self.env.rank, self.env.world_size)
        run_path = os.path.join(cfg.run.out_dir, broadcast_value(cfg.run.name or default_run_name()))
        self.run = agreed(lambda: RunDir(run_path, cfg.run.tensorboard, self.env.is_main))
        try:  # the run directory is locked from here: release it if the set-up fails
            self._set_up(cfg)
        except BaseException:
            self.run.close()
            raise

    def _set_up(self, cfg: TrainConfig) -> None:
        self.spec = model_spec(cfg, self.source)
        agreed(lambda: self.run.claim(bool(cfg.run.resume), cfg.run.overwrite))
        if cfg.run.resume:
            agreed(lambda: self.run.check_spec(self.spec))
        tables = self.source.table_configs(cfg.model.embedding_dim)
        # the id remapper runs on CPU in the data path: a gloo group (a side group on NCCL runs)
        group = None
        if cfg.data.id_transform == "managed_collision" and self.env.backend != "gloo":
            group = dist.new_group(backend="gloo")
        mc = cfg.data.managed_collision
        row_init = {t.name: t.init_fn for t in tables} if mc.evicted_row_init == "table_init" else None
        self.feeder = RemapFeeder(build_remapper(cfg.data, tables, group), mc.reset_evicted_rows, row_init,
                                  cfg.train.seed)
        # tables on meta: DistributedModelParallel materialises them sharded
        model = self.spec.build(self.env.device, cfg.train.validate_inputs, table_device=torch.device("meta"))
        if cfg.train.compile:
            model.compile_dense_path()  # the sparse arch, sharded below, stays eager
        module = TrainModule(model, cfg.model.task, cfg.model.cvr_loss_weight, self.source.user_feature)
        self.model = shard_model(module, cfg, self.env)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, self.env.device, execute_all_batches=True)
        self.step, self.cursor, self.validation = 0, 0, ValidationState()
        if cfg.run.resume:
            self.resume(cfg.run.resume)
        self.run.write_settings(cfg, self.spec)  # after a resume has loaded, before the first step

    @property
    def remapper(self) -> Optional[torch.nn.Module]:
        return self.feeder.remapper

    # ------------------------------------------------------------------ state
    def _resume_path(self, where: str) -> str:
        """Rank 0 picks the checkpoint: ``"latest"`` is the newest that verifies against
        its manifest (damaged ones are skipped with a warning); a named one must verify."""
        if where != "latest":
            verify_checkpoint(where)
            return where
        path = latest_checkpoint(self.run.checkpoints) if self.env.is_main else ""
        if path is None:
            raise ValueError(f"run.resume ('latest'): no complete, undamaged checkpoint under {self.run.checkpoints!r}")
        return path

    def resume(self, where: str) -> None:
        """Load ``where`` (a checkpoint directory or ``"latest"`` in this run's directory)."""
        path = broadcast_value(agreed(lambda: self._resume_path(where)))
        progress = load_checkpoint(path, self.model, self.optimizer, self._extra_state())
        self.step, self.cursor = int(progress["step"]), int(progress["cursor"])
        self.validation = ValidationState.from_dict(progress.get("validation", {}))

    def save(self) -> str:
        sync_batch_norm_stats(self.model)  # every rank saves rank 0's running statistics
        path = checkpoint_dir(self.run.checkpoints, self.step)
        progress = {"step": self.step, "cursor": self.cursor, "validation": self.validation.to_dict()}
        save_checkpoint(path, self.model, self.optimizer, progress, self._extra_state())
        return path

    def _extra_state(self) -> Optional[Dict[str, torch.nn.Module]]:
        return {ID_REMAP_KEY: self.remapper} if self.remapper is not None else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.bf16:
            return torch.autocast(self.env.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ eval
    def evaluate(self, split: str = "valid") -> Dict[str, float]:
        """Metrics on a held-out set (``"valid"``: data.eval_*; ``"test"``: data.test_*),
        computed over all ranks' predictions; {} when the set is empty."""
        sync_batch_norm_stats(self.model)  # every rank evaluates rank 0's running statistics (all ranks call)
        acc = MetricAccumulator(self.cfg.model.task)
        batches = list(self.feeder.remapped(
            self.source.eval_batch_iter(self.env.rank, self.env.world_size, split), False, self.step))
        if not batches:
            return {}
        self.model.eval()
        with torch.no_grad(), self._autocast():
            _drain(self.pipeline, iter(batches), len(batches), lambda out: acc.update(out.logits, out.labels, out.users))
        self.model.train()
        return acc.compute()

    def calibrate_moe(self) -> List[Dict[str, float]]:
        """Calibrate the Sparse-MoE h_infer router biases to the target active ratio.

        Runs after the last training step, before the final evaluation and checkpoint
        (docs/moe.md, "Calibration"): each rank runs ``train.calibrate_moe_batches`` of
        its next, not yet trained on, training batches in eval mode; the router logits
        are all-gathered, so every rank applies the same bias shift and the replicated
        router stays identical across ranks. No-op without ReLU-routed MoE layers or
        with ``train.calibrate_moe_batches=0``. Logs one record (``moe_calib_*``).
        """
        num = self.cfg.train.calibrate_moe_batches
        if num == 0 or not [m for m in moe_layers(self.model) if m.router != "topk"]:
            return []
        env = self.env
        # read-only remap (no profiling/eviction) when ids are managed-collision remapped
        batches = list(self.feeder.remapped(
            self.source.train_batches(self.cursor, env.rank, env.world_size, num), False, self.step))

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
        marks = {total}
        for every in (self.cfg.train.eval_every, self.cfg.run.checkpoint_every):
            if every > 0:
                marks.update(range(every, total, every))
        return sorted(m for m in marks if m > self.step)

    def _validate(self, metrics: Dict[str, float]) -> tuple:
        """Feed an evaluation to the early-stopping / plateau / best-step rule: (improved, stop)."""
        t, o = self.cfg.train, self.cfg.optim
        if not (t.early_stop_patience or t.restore_best or o.plateau_decay < 1):
            return False, False
        improved, stop = self.validation.update(metrics.get(VALIDATION_METRIC, math.nan), self.step, t, o)
        self.run.log({"step": self.step, "valid_best_step": self.validation.best_step,
                      "valid_stalls": self.validation.stalls, "lr_scale": self.validation.lr_scale})
        return improved, stop

    def fit(self) -> TrainSummary:
        """Train to ``train.steps`` (from the resumed step) or until early stopping,
        evaluating and checkpointing on schedule; returns the final metrics."""
        cfg, env = self.cfg, self.env
        total, W = cfg.train.steps, env.world_size
        start_time = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (env.is_main and cfg.train.progress_bar))
        running, count = torch.zeros((), dtype=torch.float64, device=env.device), 0  # no per-step sync
        first_bad = torch.full((), -1, dtype=torch.int64, device=env.device)  # first non-finite step
        last_loss, metrics, lr = math.nan, {}, cfg.optim.lr
        self.model.train()
        try:
            for end in self._boundaries(total):
                it = self.feeder.remapped(self.source.train_batches(self.cursor, env.rank, W, end - self.step), True,
                                          self.step)
                for k in range(end - self.step):
                    self.feeder.reset_before(k, self.model, self.optimizer)
                    lr = set_dense_lr(self.optimizer, cfg.optim, self.step, total, self.validation.lr_scale)
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
                        last_loss = mean_over_ranks(float(running) / count, env.device)
                        self._log_train(last_loss, lr, out.losses)
                        running, count = torch.zeros_like(running), 0
                        bar.set_postfix(loss=f"{last_loss:.4f}")
                    bar.update(1)
                self._stop_if_not_finite(first_bad, lr)  # never checkpoint a diverged model
                last = self.step == total
                if last and not cfg.train.restore_best:
                    self.calibrate_moe()
                improved = stop = False
                if (cfg.train.eval_every and self.step % cfg.train.eval_every == 0) or last:
                    metrics = self.evaluate()
                    if metrics:
                        self.run.log({"step": self.step, **{f"eval_{k}": v for k, v in metrics.items()}})
                        improved, stop = self._validate(metrics)
                every = cfg.run.checkpoint_every
                if ((every and self.step % every == 0) or ((last or stop) and (every or cfg.run.save_final))
                        or (improved and cfg.train.restore_best)):
                    self.save()
                if stop:
                    self.run.log({"step": self.step, "early_stop": 1})
                    break
            metrics = self._finish(metrics)
            test = self.evaluate("test")
            if test:
                self.run.log({"step": self.step, **{f"test_{k}": v for k, v in test.items()}})
        finally:
            bar.close()
            self.source.close()  # stops the background reader of file sources
            if sys.exc_info()[0] is not None:
                self.run.close()
        if cfg.run.plots:
            self.run.plot()
        self.run.close()
        summary = TrainSummary(
            run_dir=self.run.path, step=self.step, seconds=time.perf_counter() - start_time, metrics=metrics,
            train_loss=last_loss, malformed=sum_counts_over_ranks(self.source.malformed_report()),
            test_metrics=test, best_step=self.validation.best_step,
        )
        if env.is_main:
            write_summary(self.run.path, asdict(summary))
        return summary

    def _finish(self, metrics: Dict[str, float]) -> Dict[str, float]:
        """With ``train.restore_best``: end with the best evaluation's weights (its
        checkpoint), calibrated and re-evaluated; ``best.json`` names that step for export."""
        best = self.validation.best_step
        if not self.cfg.train.restore_best or best < 0:
            return metrics
        if best != self.step:
            path = checkpoint_dir(self.run.checkpoints, best)
            load_checkpoint(path, self.model, self.optimizer, self._extra_state())
        self.calibrate_moe()
        metrics = self.evaluate()
        self.run.log({"step": self.step, "restored_best_step": best, **{f"eval_{k}": v for k, v in metrics.items()}})
        if self.env.is_main:
            write_best(self.run.path, best, VALIDATION_METRIC, self.validation.best)
        return metrics

    def _log_train(self, loss: float, lr: float, losses: Dict[str, torch.Tensor]) -> None:
        record = {"step": self.step, "train_loss": loss, "lr": lr}
        record.update({f"train_{k}": float(v) for k, v in losses.items() if k != "loss"})
        inner = self.model.module.model  # DMP -> TrainModule -> the model
        record.update(collect_statistics(inner))  # e.g. MoE routing, since the last log
        reset_statistics(inner)
        if self.remapper is not None:
            record["id_remap_evicted_rows"] = self.feeder.evicted_rows  # since start/resume
        self.run.log(record)

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
