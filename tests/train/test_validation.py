"""Validation-driven training (train/validation.py and the loop): early stopping, the
plateau decay, ending with the best step's weights, the test set; the dense embedding
path with FuxiCTR's L2; table init."""

import json
import os

import pytest
import torch

from torchrec_rankmixer.inference.from_run import load_run_model
from torchrec_rankmixer.run_format import find_run_checkpoint, read_summary
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny


def _records(run_dir: str) -> list:
    return [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_early_stop_plateau_restore_best_and_test_set(tmp_path):
    """With a learning rate too small to learn, the validation AUC never improves after the
    first evaluation: the lr decays once, the run stops at the second stall, ends with the
    step-2 weights (best.json; export takes them) and scores the test set."""
    cfg = load_config(overrides=tiny(
        tmp_path, "run.name=v", "run.plots=false", "train.steps=40", "train.eval_every=2",
        "optim.lr=1e-12", "optim.embedding_lr=1e-12", "optim.warmup_steps=0",
        "train.early_stop_patience=2", "optim.plateau_decay=0.1", "optim.plateau_min_lr=1e-14",
        "train.restore_best=true", "data.test_batches=3"))
    summary = Trainer(cfg).fit()
    destroy_group()
    run_dir = os.path.join(tmp_path, "v")
    recs = _records(run_dir)
    assert summary.step == 6 and summary.best_step == 2  # evals at 2 (best), 4 (stall), 6 (stall: stop)
    assert [r["lr_scale"] for r in recs if "lr_scale" in r] == [1.0, pytest.approx(0.1), pytest.approx(0.1)]
    assert any(r.get("early_stop") for r in recs) and recs[-1].get("test_ctr_auc") is not None
    best_eval = next(r for r in recs if r["step"] == 2 and "eval_ctr_auc" in r)
    assert summary.metrics["ctr_auc"] == pytest.approx(best_eval["eval_ctr_auc"], abs=1e-9)  # restored
    assert set(summary.test_metrics) >= {"ctr_auc", "ctr_logloss"}
    assert json.load(open(os.path.join(run_dir, "best.json")))["step"] == 2
    written = read_summary(run_dir)
    assert written["best_step"] == 2 and written["test_metrics"] == pytest.approx(summary.test_metrics)
    assert find_run_checkpoint(run_dir).step == 2  # export takes what the run ended with
    progress = json.load(open(os.path.join(run_dir, "checkpoints", "step_00000006", "progress.json")))
    assert progress["validation"] == {"best": pytest.approx(best_eval["eval_ctr_auc"]), "best_step": 2,
                                      "stalls": 2, "lr_scale": pytest.approx(0.1)}


def test_validation_settings_need_evaluations():
    with pytest.raises(ValueError, match=r"\['train.early_stop_patience'\] act on evaluations"):
        load_config(overrides=["train.early_stop_patience=2", "train.eval_every=0"])
    with pytest.raises(ValueError, match="optim.embedding_l2 .* needs optim.embedding='dense'"):
        load_config(overrides=["optim.embedding_l2=0.05"])


def _table(trainer: Trainer) -> torch.Tensor:
    state = trainer.model.module.model.state_dict()
    return state["sparse_arch.embedding_bag_collection.embedding_bags.t_f0.weight"].detach().clone()


@pytest.mark.parametrize("embedding,l2,all_rows", [("dense", 0.05, True), ("row_wise_adagrad", 0.0, False)])
def test_dense_tables_with_l2_decay_every_row(tmp_path, embedding, l2, all_rows):
    """optim.embedding=dense + embedding_l2: every row moves each step (FuxiCTR's penalty on
    the whole table), not only the batch's rows as with a fused optimiser."""
    cfg = load_config(overrides=tiny(
        tmp_path, f"run.name={embedding}", "run.plots=false", "train.steps=1", "train.eval_every=0",
        "data.batch_size=4", "data.synthetic.num_embeddings=200", f"optim.embedding={embedding}",
        f"optim.embedding_l2={l2}", "optim.dense=adam", "optim.embedding_lr=0.01", "run.save_final=false"))
    trainer = Trainer(cfg)
    before = _table(trainer)
    trainer.fit()
    destroy_group()
    changed = (_table(trainer) - before).abs().sum(dim=1) > 0
    assert bool(changed.all()) is all_rows and bool(changed.any())


def test_embedding_init_std_is_the_tables_init(tmp_path):
    cfg = load_config(overrides=tiny(tmp_path, "run.name=init", "run.plots=false", "train.steps=1",
                                     "train.eval_every=0", "model.embedding_init_std=1e-4"))
    trainer = Trainer(cfg)
    weights = _table(trainer)
    trainer.fit()
    destroy_group()
    assert 0.5e-4 < float(weights.std()) < 2e-4  # TorchRec's default would be ~0.08 for 50 rows
    model, _, spec = load_run_model(os.path.join(tmp_path, "init"))
    assert {t.init_std for t in spec.tables} == {1e-4}
