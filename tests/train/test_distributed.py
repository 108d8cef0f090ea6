"""End to end: ``rankmixer-train`` on 2 processes (torchrun, gloo), then the checkpoint is
resumed on 1 process. One multi-process run is shared by every assertion here."""

import json
import os
import subprocess

import pytest
import torch

from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer
from torchrec_rankmixer.utils.metrics import binary_auc, group_auc, normalized_entropy, prob_logloss

from tests.train.helpers import ROOT, destroy_group, tiny, torchrun_train

STEPS = 8


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """Run the CLI under torchrun with 2 CPU processes; returns (run dir, stdout, overrides)."""
    out = tmp_path_factory.mktemp("dist")
    overrides = tiny(out, f"train.steps={STEPS}", "train.eval_every=4", "run.checkpoint_every=4",
                     "run.name=two", "sharding.sharding_types=[table_wise]",
                     "sharding.constraints={t_f3: [data_parallel]}")
    stdout = torchrun_train(overrides)
    return os.path.join(out, "two"), stdout, overrides


def _checkpoint_tensors(ckpt: str, scratch: str) -> dict:
    """Every tensor of a DCP checkpoint (model, both optimisers, sharded tables gathered)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    flat = os.path.join(scratch, f"flat_{len(os.listdir(scratch))}.pt")
    dcp_to_torch_save(ckpt, flat)
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, torch.Tensor):
            out[prefix] = value

    walk("", torch.load(flat, weights_only=False))
    return out


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_run_directory(two_rank_run):
    run_dir, stdout, _ = two_rank_run
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "auc.png"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    for step in (4, 8):
        ckpt = os.path.join(run_dir, "checkpoints", f"step_{step:08d}")
        progress = json.load(open(os.path.join(ckpt, "progress.json")))
        assert {k: progress[k] for k in ("step", "cursor", "world_size")} == {"step": step, "cursor": 2 * step, "world_size": 2}
    recs = _records(run_dir)
    assert [r["step"] for r in recs if "train_loss" in r] == [2, 4, 6, 8]
    assert [r["step"] for r in recs if "eval_ctr_auc" in r] == [4, 8]
    assert "eval_ctr_gauc" in stdout and "train_loss" in stdout  # the final table
    assert stdout.count("eval_ctr_auc") == 1  # printed by rank 0 only


def test_resume_on_one_rank_and_metrics_match_reference(two_rank_run, tmp_path):
    """Load the 2-rank checkpoint on 1 rank (resharding), gather every eval prediction in one
    place and check the metrics the 2 ranks computed together against a direct reference."""
    run_dir, _, overrides = two_rank_run
    logged = [r for r in _records(run_dir) if "eval_ctr_auc" in r][-1]
    destroy_group()
    try:
        ckpt = os.path.join(run_dir, "checkpoints", f"step_{STEPS:08d}")
        cfg = load_config(overrides=overrides + [f"run.out_dir={tmp_path}", "run.name=one",
                                                  f"run.resume={ckpt}", f"train.steps={STEPS + 2}"])
        trainer = Trainer(cfg)
        assert (trainer.step, trainer.cursor) == (STEPS, 2 * STEPS)
        batches = list(trainer.source.eval_batch_iter(0, 1))
        trainer.model.eval()
        outs = []
        with torch.no_grad():
            it = iter(batches)
            for _ in batches:
                outs.append(trainer.pipeline.progress(it))
        trainer.model.train()
        probs = torch.sigmoid(torch.cat([o.logits[:, 0] for o in outs]))
        labels = torch.cat([b.labels for b in batches])
        users = torch.cat([o.users for o in outs])
        reference = {
            "eval_ctr_auc": binary_auc(probs, labels),
            "eval_ctr_gauc": group_auc(probs, labels, users),
            "eval_ctr_logloss": prob_logloss(probs, labels),
            "eval_ctr_ne": normalized_entropy(probs, labels),
        }
        for k, v in reference.items():
            assert logged[k] == pytest.approx(v, abs=1e-5), k
        summary = trainer.fit()  # training continues on 1 rank after resharding
        assert summary.step == STEPS + 2 and summary.train_loss == summary.train_loss
    finally:
        destroy_group()


def test_two_rank_resume_is_exact(two_rank_run, tmp_path):
    """2 processes: 8 steps straight == 4 steps, stop, resume on 2 processes for 4 more.
    Every tensor of the step-8 checkpoints (sharded tables, dense weights, fused embedding
    optimiser and dense optimiser state) is bit-identical."""
    run_dir, _, overrides = two_rank_run
    half = os.path.join(run_dir, "checkpoints", "step_00000004")
    torchrun_train(overrides + [f"run.out_dir={tmp_path}", "run.name=resumed", f"run.resume={half}"])
    resumed_ckpt = os.path.join(tmp_path, "resumed", "checkpoints", f"step_{STEPS:08d}")
    progress = json.load(open(os.path.join(resumed_ckpt, "progress.json")))
    assert {k: progress[k] for k in ("step", "cursor", "world_size")} == {"step": STEPS, "cursor": 2 * STEPS, "world_size": 2}
    want = _checkpoint_tensors(os.path.join(run_dir, "checkpoints", f"step_{STEPS:08d}"), tmp_path)
    got = _checkpoint_tensors(resumed_ckpt, tmp_path)
    assert want.keys() == got.keys()
    assert any(k.startswith("optim.state.sparse.") for k in want)  # fused row-wise Adagrad
    assert any(k.startswith("optim.state.dense.") for k in want)  # dense optimiser
    assert any("embedding_bags" in k and k.startswith("model.") for k in want)  # sharded tables
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    # The straight run moved every tensor between step 4 and 8, so equality is not vacuous.
    first_half = _checkpoint_tensors(half, tmp_path)
    assert any(not torch.equal(first_half[k], want[k]) for k in want if k in first_half)


def test_multinode_script_parses():
    """The loopback two-node launcher is valid bash (it is run by hand; see docs/training.md)."""
    script = os.path.join(ROOT, "examples", "multinode_local.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read()
    assert "--nnodes=2" in text and "--rdzv_backend=c10d" in text


def test_two_rank_criteo_binary_resume_is_exact(tmp_path):
    """TorchRec binary Criteo days (written by TorchRec's test helper) on 2 processes:
    4 steps straight == 2 steps, stop, resume for 2 more, bit for bit."""
    from torchrec.datasets.test_utils.criteo_test_utils import CriteoTest

    with CriteoTest._create_dataset_npys(num_rows=50, filenames=["day_0", "day_1"]) as paths:
        prefixes = [p[: -len("_dense.npy")] for p in paths if p.endswith("_dense.npy")]
        overrides = tiny(tmp_path, "data.format=criteo_binary", f"data.train_files={prefixes}",
                         f"data.eval_files=[{prefixes[1]}]", "data.dense_transform=none", "data.num_embeddings=40",
                         "train.steps=4", "train.eval_every=0", "run.checkpoint_every=2", "run.name=bin",
                         "sharding.sharding_types=[table_wise]", "run.plots=false")
        torchrun_train(overrides)
        ckpt = os.path.join(tmp_path, "bin", "checkpoints")
        torchrun_train(overrides + ["run.name=bin_resumed", f"run.resume={os.path.join(ckpt, 'step_00000002')}"])
    want = _checkpoint_tensors(os.path.join(ckpt, "step_00000004"), tmp_path)
    got = _checkpoint_tensors(os.path.join(tmp_path, "bin_resumed", "checkpoints", "step_00000004"), tmp_path)
    assert want.keys() == got.keys() and any("embedding_bags" in k for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
