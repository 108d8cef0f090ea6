"""Export from a rankmixer-train run directory (config.yaml + DCP checkpoints)."""

import json
import os
import shutil

import pytest
import torch

from torchrec_rankmixer.inference import (
    QuantizationOptions,
    build_inference_model,
    export_from_run_dir,
    full_state_dict,
    load_artifact,
    load_run_model,
)
from torchrec_rankmixer.inference.cli import export_main
from torchrec_rankmixer.inference.from_run import find_run_checkpoint
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.run_format import read_data_settings, read_spec
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny

# one table-wise (ShardedTensor in DCP) and one data-parallel table at least
SHARDING = "sharding.constraints={t_f0: [table_wise], t_f1: [data_parallel], t_f2: [table_wise]}"


def _train_state(trainer: Trainer) -> dict:
    """The trained model's unsharded weights, keys of DLRM_RankMixer."""
    full = full_state_dict(trainer.model)  # TrainModule keys: "model.<key>"
    return {k[len("model."):]: v.clone() for k, v in full.items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step tiny run with checkpoints at steps 2 and 4, and its weights at each."""
    out = tmp_path_factory.mktemp("runs")
    destroy_group()
    states = {}
    for steps in (2, 4):  # step 2 weights from a 2-step run (same seed, same batches)
        cfg = load_config(overrides=tiny(out, f"train.steps={steps}", "train.eval_every=0",
                                         "data.eval_batches=0", "run.plots=false",
                                         "run.checkpoint_every=2", f"run.name=r{steps}", SHARDING))
        trainer = Trainer(cfg)
        trainer.fit()
        states[steps] = _train_state(trainer)
        destroy_group()
    return os.path.join(out, "r4"), states


@pytest.fixture
def builds(monkeypatch) -> list:
    """Records every DLRM_RankMixer construction (export must build the model once)."""
    from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

    calls: list = []
    original = DLRM_RankMixer.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("rankmixer_config"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(DLRM_RankMixer, "__init__", counting)
    return calls


def _inputs(model: torch.nn.Module, batch: int = 16) -> tuple:
    from torchrec_rankmixer.data.synthetic import SyntheticClickData

    b = SyntheticClickData(num_sparse_features=4, num_embeddings=50).batch(batch, 123)
    kjt = b.sparse_features
    return b.dense_features, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), batch).int()


def test_loads_latest_and_chosen_step_exactly(run):
    run_dir, states = run
    model, ckpt, spec = load_run_model(run_dir)
    assert (ckpt.step, os.path.basename(ckpt.path)) == (4, "step_00000004")
    assert spec == read_spec(run_dir) == ModelSpec.from_model(model)  # built from spec.json
    got = model.state_dict()
    assert got.keys() == states[4].keys()
    for k in got:
        torch.testing.assert_close(got[k], states[4][k], rtol=0, atol=0, msg=k)
    early, ckpt2, _ = load_run_model(run_dir, step=2)
    assert ckpt2.step == 2
    emb = "sparse_arch.embedding_bag_collection.embedding_bags.t_f0.weight"
    torch.testing.assert_close(early.state_dict()[emb], states[2][emb], rtol=0, atol=0)
    assert not torch.equal(early.state_dict()[emb], got[emb])  # a different step was read
    # a checkpoint directory itself is accepted too
    assert find_run_checkpoint(ckpt2.path) == ckpt2


def test_artifact_equals_trained_model_quantized(run, tmp_path, builds):
    run_dir, states = run
    result, ckpt = export_from_run_dir(run_dir, tmp_path / "exp", artifact="export")
    assert len(builds) == 1  # built once, from spec.json
    assert ckpt.step == 4 and result.path.endswith(("model.pt2", "model.ts"))
    trained, _, _ = load_run_model(run_dir)
    trained.load_state_dict(states[4])  # the in-memory trained weights
    assert result.metadata["model_spec"] == ModelSpec.from_model(trained).to_dict()
    reference = build_inference_model(trained, QuantizationOptions())  # int8 tables
    loaded = load_artifact(tmp_path / "exp")
    inputs = _inputs(trained)
    with torch.no_grad():
        want = reference(*inputs)
        torch.testing.assert_close(loaded.module(*inputs), want, rtol=0, atol=0)
        float_logits = trained.eval()(inputs[0], _kjt(inputs))
    assert (want - float_logits).abs().max() < 0.05  # int8 tables vs float


def _kjt(inputs: tuple):  # type: ignore[no-untyped-def]
    from torchrec import KeyedJaggedTensor

    _, values, lengths = inputs
    return KeyedJaggedTensor.from_lengths_sync([f"f{i}" for i in range(lengths.shape[0])],
                                               values, lengths.reshape(-1))


def test_cli_run_dir_and_step(run, tmp_path, capsys):
    run_dir, _ = run
    code = export_main(["--run-dir", run_dir, "--step", "2", "--output", str(tmp_path / "e"),
                        "--artifact", "torchscript", "--table-dtype", "int4"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 2 and printed["checkpoint"].endswith("step_00000002")
    meta = json.load(open(tmp_path / "e" / "metadata.json"))
    assert meta["quantization"]["table_dtype"] == "int4" and meta["artifact"] == "torchscript"


def test_cli_errors(run, tmp_path, capsys):
    run_dir, _ = run
    missing = str(tmp_path / "nope")
    assert export_main(["--run-dir", missing, "--output", str(tmp_path / "e")]) == 2
    assert f"run directory {missing!r} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --step belongs to --run-dir
        export_main(["--checkpoint", "x.pt", "--step", "2", "--output", str(tmp_path / "e")])
    with pytest.raises(SystemExit):  # one source only
        export_main(["--checkpoint", "x.pt", "--run-dir", run_dir, "--output", str(tmp_path / "e")])
    # a DCP directory given as a plain checkpoint points at --run-dir
    assert export_main(["--checkpoint", run_dir, "--output", str(tmp_path / "e")]) == 2
    assert "--run-dir" in capsys.readouterr().err


def _copy_run(run_dir: str, dst) -> str:  # type: ignore[no-untyped-def]
    target = str(dst / "copy")
    shutil.copytree(run_dir, target)
    return target


def test_error_paths(run, tmp_path):
    run_dir, _ = run
    with pytest.raises(ValueError, match="step \\(3\\) has no complete checkpoint .* steps: \\[2, 4\\]"):
        find_run_checkpoint(run_dir, step=3)
    not_run = tmp_path / "plain"
    not_run.mkdir()
    with pytest.raises(ValueError, match=f"{str(not_run)!r} is not a rankmixer-train run directory"):
        load_run_model(not_run)
    copy = _copy_run(run_dir, tmp_path)
    with pytest.raises(ValueError, match="step \\(2\\) does not match checkpoint directory"):
        find_run_checkpoint(os.path.join(copy, "checkpoints", "step_00000004"), step=2)
    os.remove(os.path.join(copy, "checkpoints", "step_00000004", "manifest.json"))  # incomplete
    assert find_run_checkpoint(copy).step == 2
    with open(os.path.join(copy, "checkpoints", "step_00000002", "progress.json"), "a") as f:
        f.write(" ")  # damaged: no longer matches its manifest
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint: .*progress.json has"):
        with pytest.raises(ValueError, match=f"run directory {copy!r} has no complete, undamaged checkpoint"):
            load_run_model(copy)
    with pytest.raises(ValueError, match="step_00000002' is damaged: progress.json has"):
        load_run_model(copy, step=2)


def test_spec_mismatch_and_legacy_run_directories_are_rejected(run, tmp_path):
    run_dir, _ = run
    copy = _copy_run(run_dir, tmp_path)
    spec_path = os.path.join(copy, "spec.json")
    data = json.load(open(spec_path))
    data["tables"][0]["num_embeddings"] += 1  # edited after training
    json.dump(data, open(spec_path, "w"))
    with pytest.raises(ValueError, match="does not match the run's spec.json: .*t_f0.weight has shape"):
        load_run_model(copy)
    os.remove(spec_path)  # a run directory written by 0.1
    with pytest.raises(ValueError, match=f"has no spec.json.*rankmixer-train --upgrade-run {copy}"):
        load_run_model(copy)


def test_esmm_run_exports_ctr_and_cvr_towers(tmp_path, builds) -> None:
    """A CTR + CVR (ESMM) run exports; the artifact scores as the trained model."""
    from torchrec_rankmixer.inference.predictor import Predictor

    destroy_group()
    cfg = load_config(overrides=tiny(
        tmp_path, "train.steps=2", "train.eval_every=0", "data.eval_batches=0",
        "run.plots=false", "run.checkpoint_every=2", "run.name=esmm", "model.task=esmm",
        "model.cvr_loss_weight=0.5"))
    Trainer(cfg).fit()
    destroy_group()
    run_dir = os.path.join(tmp_path, "esmm")
    model, ckpt, _ = load_run_model(run_dir)
    assert ckpt.step == 2 and type(model.over_arch).__name__ == "TaskTowers"
    builds.clear()
    result, _ = export_from_run_dir(run_dir, tmp_path / "export", artifact="export")
    assert len(builds) == 1
    assert result.metadata["task"] == "esmm"
    args = _inputs(model)
    with torch.no_grad():
        want = model(args[0], _kjt(args))  # (B, 2): CTR, CVR logits
    got = Predictor(result.path).run(*args)
    assert got.shape == (16, 2)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # int8 tables by default
    assert not torch.allclose(got[:, 0], got[:, 1])  # two towers, not one logit twice


def test_moe_run_is_calibrated_before_export(tmp_path, builds) -> None:
    """A Sparse-MoE run: export calibrates h_infer to the target ratio on training batches."""
    from torchrec_rankmixer.inference.from_run import calibrate_run_moe
    from torchrec_rankmixer.modules.moe import PerTokenSparseMoE

    destroy_group()
    cfg = load_config(overrides=tiny(
        tmp_path, "train.steps=2", "train.eval_every=0", "data.eval_batches=0",
        "run.plots=false", "run.checkpoint_every=2", "run.name=moe",
        "model.rankmixer={use_moe: true, moe_num_experts: 4, moe_target_active_ratio: 0.5}"))
    Trainer(cfg).fit()
    destroy_group()
    run_dir = os.path.join(tmp_path, "moe")

    model, _, spec = load_run_model(run_dir)
    data = read_data_settings(run_dir)
    moes = [m for m in model.modules() if isinstance(m, PerTokenSparseMoE)]
    before = [m.router_infer.bias.detach().clone() for m in moes]
    records = calibrate_run_moe(model, spec, data)  # default: 16 training batches
    assert len(records) == len(moes) > 0
    for r in records:
        assert abs(r["ratio_after"] - 0.5) <= 0.1, r
    assert any(not torch.equal(b, m.router_infer.bias) for b, m in zip(before, moes))

    untouched, _, _ = load_run_model(run_dir)
    assert calibrate_run_moe(untouched, spec, data, 0) == []
    with pytest.raises(ValueError, match=r"calibrate_moe_batches \(-1\) must be an int >= 0"):
        calibrate_run_moe(untouched, spec, data, -1)

    builds.clear()
    result, _ = export_from_run_dir(run_dir, tmp_path / "export", artifact="export")
    assert result.metadata["moe_execution"] == "sparse" and len(builds) == 1


def test_calibration_of_a_run_without_moe_is_an_error(run) -> None:
    from torchrec_rankmixer.inference.from_run import calibrate_run_moe

    run_dir, _ = run
    model, _, spec = load_run_model(run_dir)
    data = read_data_settings(run_dir)
    assert calibrate_run_moe(model, spec, data) == []  # default: nothing to do
    with pytest.raises(ValueError, match=r"calibrate_moe_batches \(4\) was asked for, but the model"):
        calibrate_run_moe(model, spec, data, 4)


def test_sequence_run_exports_and_scores_as_trained(tmp_path, builds) -> None:
    """A behaviour-sequence run (data.format=synthetic_sequences): spec.json records the
    EmbeddingCollection and the pooling; export builds the model once, quantizes the
    sequence table too, and the artifact scores as the trained model."""
    from torchrec import KeyedJaggedTensor

    from torchrec_rankmixer.data.sources import SyntheticSequenceSource
    from torchrec_rankmixer.inference.predictor import Predictor

    destroy_group()
    cfg = load_config(overrides=tiny(
        tmp_path, "data.format=synthetic_sequences", "data.sequences.max_history=6",
        "data.sequences.num_items=40", "data.sequences.num_categories=8", "train.steps=2",
        "train.eval_every=0", "data.eval_batches=0", "run.plots=false", "run.name=seq",
        "model.sequence_features=[{name: item, max_len: 1}, {name: hist_item, max_len: 4, pooling: target, candidate: item}]"))
    Trainer(cfg).fit()
    destroy_group()
    run_dir = os.path.join(tmp_path, "seq")
    spec = read_spec(run_dir)
    assert [t.name for t in spec.sequence_tables] == ["t_item"]
    assert [(c.name, c.pooling) for c in spec.sequence_features] == [("item", "mean"), ("hist_item", "target")]
    builds.clear()
    result, _ = export_from_run_dir(run_dir, tmp_path / "export")
    assert len(builds) == 1
    model, _, _ = load_run_model(run_dir)
    batch = SyntheticSequenceSource(cfg.data).train_batches(cursor=99, rank=0, world_size=1, num=1)
    b = next(iter(batch))
    kjt: KeyedJaggedTensor = b.sparse_features
    with torch.no_grad():
        want = model(b.dense_features, kjt)
    lengths = kjt.lengths().reshape(len(kjt.keys()), -1)
    got = Predictor(result.path).run(b.dense_features, kjt.values(), lengths)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # int8 tables by default
