"""In-process (one rank) tests of the training loop: exact resume, ESMM, run directory."""

import contextlib
import json
import os

import pytest
import torch
from torchrec.datasets.test_utils.criteo_test_utils import CriteoTest

from torchrec_rankmixer.modules.moe import PerTokenSparseMoE
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny


@pytest.fixture(autouse=True)
def _fresh_group():
    destroy_group()
    yield
    destroy_group()


def _params(trainer: Trainer) -> dict:
    out = {}
    for k, v in trainer.model.state_dict().items():
        t = v.local_shards()[0].tensor if hasattr(v, "local_shards") else v
        out[k] = t.detach().clone()
    return out


def _opt_state(trainer: Trainer) -> dict:
    out = {}
    for k, st in trainer.optimizer.state_dict()["state"].items():
        for name, v in st.items():
            t = v.local_shards()[0].tensor if hasattr(v, "local_shards") else v
            out[f"{k}.{name}"] = torch.as_tensor(t).detach().clone()
    return out


def _csv_data(tmp_path):
    g = torch.Generator().manual_seed(1)
    lines = ["label,user,item,city"] + [
        f"{int(u % 3 == 0)},{u},{100 + i},c{u % 4}" for u, i in torch.randint(0, 30, (90, 2), generator=g).tolist()]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    return ["data.format=csv", f"data.train_files=[{path}]", "data.sparse_columns=[user, item, city]",
            "data.num_embeddings=40", "model.rankmixer.num_tokens=3", "model.rankmixer.d_model=12"]


@pytest.mark.parametrize("data", ["synthetic", "csv", "criteo_binary"])
def test_resume_is_exact(tmp_path, data):
    """6 steps straight == 3 steps, checkpoint, stop, resume for 3 more (params and optimiser
    state); file sources wrap around their 90 rows of 32-row batches (a resumed stream
    starts at the cursor)."""
    with contextlib.ExitStack() as stack:
        extra = []
        if data == "csv":
            extra = _csv_data(tmp_path)
        elif data == "criteo_binary":
            paths = stack.enter_context(CriteoTest._create_dataset_npys(num_rows=90, filenames=["day_0"]))
            extra = ["data.format=criteo_binary", f"data.train_files=[{paths[0][:-len('_dense.npy')]}]",
                     "data.dense_transform=none", "data.num_embeddings=60"]
        _check_resume_is_exact(tmp_path, extra)


def _check_resume_is_exact(tmp_path, extra):
    base = tiny(tmp_path, "train.steps=6", "train.eval_every=0", "run.plots=false", *extra)
    straight = Trainer(load_config(overrides=base + ["run.name=straight"]))
    straight.fit()
    want, want_opt = _params(straight), _opt_state(straight)
    destroy_group()

    first = Trainer(load_config(overrides=base + ["run.name=split", "train.steps=3", "run.checkpoint_every=3"]))
    first.fit()
    destroy_group()
    ckpt = os.path.join(tmp_path, "split", "checkpoints", "step_00000003")
    assert json.load(open(os.path.join(ckpt, "progress.json")))["step"] == 3

    resumed = Trainer(load_config(overrides=base + ["run.name=split", "run.resume=latest"]))
    assert (resumed.step, resumed.cursor) == (3, 3)
    resumed.fit()
    got, got_opt = _params(resumed), _opt_state(resumed)
    assert want.keys() == got.keys() and want_opt.keys() == got_opt.keys()
    assert any("embedding_bags" in k for k in want_opt)  # fused embedding optimiser state saved
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    for k in want_opt:
        torch.testing.assert_close(got_opt[k], want_opt[k], rtol=0, atol=0, msg=k)


def test_esmm_run_reports_every_task(tmp_path):
    cfg = load_config(overrides=tiny(tmp_path, "model.task=esmm", "model.cvr_loss_weight=0.5",
                                     "train.steps=2", "train.eval_every=2", "run.name=esmm"))
    summary = Trainer(cfg).fit()
    assert {"ctr_auc", "ctcvr_auc", "cvr_auc", "ctr_gauc"} <= set(summary.metrics)
    assert summary.train_loss == summary.train_loss  # not NaN
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "esmm", "metrics.jsonl"))]
    assert "train_ctcvr" in recs[0] and "train_aux" not in recs[0]


def test_cpu_rejects_row_wise_and_bf16(tmp_path):
    with pytest.raises(ValueError, match="need NCCL"):
        Trainer(load_config(overrides=tiny(tmp_path, "sharding.sharding_types=[row_wise]")))
    destroy_group()
    with pytest.raises(ValueError, match="train.precision \\('bf16'\\) needs a GPU"):
        Trainer(load_config(overrides=tiny(tmp_path, "train.precision=bf16", "train.device=cpu")))
    destroy_group()
    with pytest.raises(ValueError, match="unknown table"):
        Trainer(load_config(overrides=tiny(tmp_path, "sharding.constraints={nope: [table_wise]}")))
    destroy_group()
    with pytest.raises(ValueError, match="no complete, undamaged checkpoint under"):
        Trainer(load_config(overrides=tiny(tmp_path, "run.resume=latest", "run.name=empty")))


@pytest.mark.parametrize("decay,expect", [
    ("none", [0.25, 1.0, 1.0, 1.0]),
    ("linear", [0.25, 1.0, 0.55, 0.1]),
    ("cosine", [0.25, 1.0, 0.55, 0.1]),
])
def test_lr_schedule(decay, expect):
    from torchrec_rankmixer.train.config import OptimSettings
    from torchrec_rankmixer.train.distributed import lr_factor

    o = OptimSettings(warmup_steps=4, decay=decay, decay_steps=10, min_lr_ratio=0.1)
    got = [lr_factor(s, o, 100) for s in (0, 3, 9, 14)]
    assert got == pytest.approx(expect, abs=1e-9)
    exp = OptimSettings(warmup_steps=0, decay="exponential", decay_steps=10, min_lr_ratio=0.1)
    assert lr_factor(5, exp, 100) == pytest.approx(0.1 ** 0.5)


def test_csv_files_train_end_to_end(tmp_path):
    """A Frappe-style CSV (written here) through FileSource, DMP and the pipeline."""
    g = torch.Generator().manual_seed(0)
    lines = ["label,user,item,city"]
    for _ in range(64):
        u, i = torch.randint(0, 20, (2,), generator=g).tolist()
        lines.append(f"{int((u + i) % 3 == 0)},{u},{100 + i},{u % 4}")
    lines.append("7,1,2,3")  # malformed label
    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    train.write_text("\n".join(lines) + "\n")
    valid.write_text("\n".join(lines[:41]) + "\n")
    cfg = load_config(overrides=tiny(
        tmp_path, "data.format=csv", f"data.train_files=[{train}]", f"data.eval_files=[{valid}]",
        "data.sparse_columns=[user, item, city]", "data.user_column=user", "data.num_embeddings=64",
        "data.max_malformed_fraction=0.05",
        "model.rankmixer.num_tokens=3", "model.rankmixer.d_model=12", "train.steps=3", "train.eval_every=3", "run.name=csv",
    ))
    summary = Trainer(cfg).fit()
    # every pass over the file counts its malformed row again (3 steps x 32 rows > 1 epoch)
    assert summary.malformed["bad_label"] >= 1 and summary.malformed["rows"] >= 65
    assert {"ctr_auc", "ctr_gauc", "ctr_logloss", "ctr_ne"} <= set(summary.metrics)


def test_moe_through_model_rankmixer_logs_routing_statistics(tmp_path):
    """RankMixerConfig fields pass through model.rankmixer; the MoE's statistics() are logged
    per window (its penalties use gradient injection: no auxiliary-loss metric)."""
    cfg = load_config(overrides=tiny(tmp_path, "model.rankmixer={use_moe: true, moe_num_experts: 2}",
                                     "train.steps=2", "train.eval_every=0", "run.name=moe", "run.plots=false"))
    trainer = Trainer(cfg)
    assert trainer.model.module.model.config.use_moe
    trainer.fit()
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "moe", "metrics.jsonl"))]
    assert not any(k.endswith("_aux") for k in recs[0])
    ratios = {k: v for k, v in recs[0].items() if k.endswith(".active_ratio")}  # one per MoE layer
    assert "encoder.blocks.0.ffn_mix.routed.active_ratio" in ratios  # the default block's first MoE
    assert all(0.0 < v <= 1.0 for v in ratios.values())


def test_final_checkpoint_by_default_and_opt_out(tmp_path):
    """With checkpoint_every=0 a finished run still has its last step checkpointed (so it can
    be exported or resumed); run.save_final=false writes none."""
    base = tiny(tmp_path, "train.steps=2", "train.eval_every=0", "run.plots=false")
    Trainer(load_config(overrides=base + ["run.name=default"])).fit()
    destroy_group()
    ckpts = os.path.join(tmp_path, "default", "checkpoints")
    assert os.listdir(ckpts) == ["step_00000002"]
    assert json.load(open(os.path.join(ckpts, "step_00000002", "progress.json")))["step"] == 2
    Trainer(load_config(overrides=base + ["run.name=none", "run.save_final=false"])).fit()
    assert not os.path.exists(os.path.join(tmp_path, "none", "checkpoints")) or not os.listdir(
        os.path.join(tmp_path, "none", "checkpoints"))


def test_final_eval_of_a_moe_run_is_calibrated(tmp_path):
    """rankmixer-train calibrates the h_infer routers after the last step, before the final
    eval and checkpoint; ``train.calibrate_moe_batches=0`` turns it off."""
    moe = "model.rankmixer={use_moe: true, moe_num_experts: 4, moe_target_active_ratio: 0.25}"
    base = tiny(tmp_path, moe, "train.steps=4", "train.eval_every=0", "run.plots=false",
                "train.calibrate_moe_batches=3", "run.checkpoint_every=4")
    trainer = Trainer(load_config(overrides=base + ["run.name=cal"]))
    inner = trainer.model.module.model
    trainer.fit()
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "cal", "metrics.jsonl"))]
    calib = [r for r in recs if "moe_calib_0_ratio_after" in r]
    assert len(calib) == 1 and calib[0]["step"] == 4
    assert calib[0]["moe_calib_0_ratio_after"] == pytest.approx(0.25, abs=0.02)
    # the final eval comes after the calibration in the log
    assert recs.index(calib[0]) < max(i for i, r in enumerate(recs) if "eval_ctr_auc" in r)
    destroy_group()
    off = Trainer(load_config(overrides=base + ["run.name=nocal", "train.calibrate_moe_batches=0"]))
    off.fit()
    assert off.calibrate_moe() == []
    # same training; the calibrated run's router bias differs by one shift per token
    first_moe = lambda m: next(x for x in m.modules() if isinstance(x, PerTokenSparseMoE))  # noqa: E731
    shift = (first_moe(inner).router_infer.bias
             - first_moe(off.model.module.model).router_infer.bias).detach()  # (T, E)
    assert shift.abs().max() > 0
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "nocal", "metrics.jsonl"))]
    assert not any("moe_calib_0_ratio_after" in r for r in recs)
    with pytest.raises(ValueError, match="train.calibrate_moe_batches"):
        load_config(overrides=base + ["train.calibrate_moe_batches=-1"])


def test_spec_json_before_the_first_step_and_checked_on_resume(tmp_path):
    """spec.json is in the run directory before any step; a resume whose settings describe
    another model is refused before anything in the run directory is rewritten."""
    from torchrec_rankmixer.models.spec import ModelSpec
    from torchrec_rankmixer.run_format import read_spec

    base = tiny(tmp_path, "train.steps=2", "train.eval_every=0", "run.checkpoint_every=2", "run.name=s",
                "run.plots=false")
    trainer = Trainer(load_config(overrides=base))
    run_dir = os.path.join(tmp_path, "s")
    assert trainer.step == 0 and read_spec(run_dir) == trainer.spec
    trainer.fit()
    destroy_group()
    assert ModelSpec.from_model(trainer.model.module.model) == read_spec(run_dir)
    config_before = open(os.path.join(run_dir, "config.yaml")).read()
    resumed = base + ["run.resume=latest", "train.steps=4", "model.rankmixer.d_model=32"]
    with pytest.raises(ValueError, match=r"describe another model .*rankmixer_config.d_model .*16 in the run, 32 now"):
        Trainer(load_config(overrides=resumed))
    destroy_group()
    assert open(os.path.join(run_dir, "config.yaml")).read() == config_before
    ok = Trainer(load_config(overrides=base + ["run.resume=latest", "train.steps=4", "model.rankmixer.kernel=reference"]))
    assert ok.step == 2  # the kernel is an execution choice: the same model
    destroy_group()


def test_sequence_tables_are_never_data_parallel(tmp_path):
    """TorchRec's data-parallel EmbeddingCollection mis-sizes jagged outputs, so the planner
    never gets that choice for sequence tables and an explicit request is refused."""
    base = tiny(tmp_path, "data.format=synthetic_sequences", "train.steps=1", "train.eval_every=0",
                "run.plots=false", "run.save_final=false")
    trainer = Trainer(load_config(overrides=base + ["run.name=seq"]))
    plan = trainer.model.plan.plan
    seq = next(v for k, v in plan.items() if "sequence_arch" in k)
    assert {p.sharding_type for p in seq.values()} == {"table_wise"}
    trainer.fit()
    destroy_group()
    with pytest.raises(ValueError, match="sequence tables cannot be data_parallel"):
        Trainer(load_config(overrides=base + ["run.name=seq2", "sharding.constraints={t_item: [data_parallel]}"]))
    destroy_group()


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_runs_keep_freed_memory_unless_told_not_to(tmp_path, monkeypatch, keep):
    """train.keep_freed_memory (default true) sets glibc malloc up before the first step on CPU."""
    import torchrec_rankmixer.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append(True) or True)
    extra = [] if keep else ["train.keep_freed_memory=false"]
    cfg = load_config(overrides=tiny(tmp_path, "train.steps=1", "train.eval_every=0", "run.plots=false", *extra))
    assert cfg.train.keep_freed_memory is keep
    Trainer(cfg).fit()
    assert calls == ([True] if keep else [])
