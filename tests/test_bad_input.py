"""Issue 14's bad-input classes, one test each: every one gives a clear error (naming the
file, key, row or value) or the correct behaviour. Crash (kill -9) behaviour of
checkpoints is in tests/train/test_checkpoint_crash.py; bad data files in tests/data/."""

import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

from torchrec_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.inference import Predictor, export_from_run_dir, export_model, load_artifact
from torchrec_rankmixer.inference.cli import predict_main
from torchrec_rankmixer.train.cli import main as train_main
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer
from torchrec_rankmixer.utils.files import DirectoryLock
from torchrec_rankmixer.utils.metrics import binary_auc

from tests.inference.helpers import Planted, artifact_inputs, small_model
from tests.train.helpers import ROOT, destroy_group, tiny

MARKER = "planted_code_ran"



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A tiny run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("runs")
    destroy_group()
    Trainer(load_config(overrides=tiny(out, "train.steps=4", "train.eval_every=0", "run.plots=false",
                                       "run.checkpoint_every=2", "run.name=r"))).fit()
    destroy_group()
    return str(out / "r")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("art")
    return export_model(small_model(seed=1), out, artifact="export").path


def _copy(src: str, dst) -> str:  # type: ignore[no-untyped-def]
    target = os.path.join(str(dst), os.path.basename(src))
    shutil.copytree(src, target)
    return target


# ----------------------------------------------------------------- code from files
def test_planted_dcp_metadata_does_not_run(run_dir, tmp_path) -> None:
    run = _copy(run_dir, tmp_path)
    marker = str(tmp_path / MARKER)
    ckpt = os.path.join(run, "checkpoints", "step_00000004")
    with open(os.path.join(ckpt, ".metadata"), "wb") as f:
        pickle.dump(Planted(marker), f)
    from torchrec_rankmixer.run_format import write_manifest

    write_manifest(ckpt)  # an attacker can write a matching manifest too
    with pytest.raises(ValueError, match="refusing to unpickle io.open"):
        export_from_run_dir(run, tmp_path / "art", step=4)
    destroy_group()
    cfg = load_config(overrides=tiny(tmp_path, "run.name=" + os.path.basename(run), "run.resume=" + ckpt,
                                     "train.steps=5"))
    with pytest.raises(ValueError, match="refusing to unpickle io.open"):
        Trainer(cfg)
    destroy_group()
    assert not os.path.exists(marker)


def test_planted_pickle_in_an_artifact_does_not_run(artifact, tmp_path) -> None:
    marker = str(tmp_path / MARKER)
    planted = str(tmp_path / "model.pt2")
    with zipfile.ZipFile(artifact) as src, zipfile.ZipFile(planted, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                data = pickle.dumps(Planted(marker))
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="holds pickled objects beyond tensors"):
        load_artifact(planted)
    with pytest.raises(ValueError, match="holds pickled objects beyond tensors"):
        Predictor(planted)
    assert not os.path.exists(marker)


def test_the_docs_say_which_inputs_are_trusted() -> None:
    text = open(os.path.join(ROOT, "docs", "inference.md")).read() + open(os.path.join(ROOT, "README.md")).read()
    assert "Trusted inputs" in text


# ----------------------------------------------------------------- silent corruption
def test_overwritten_checkpoint_bytes_are_detected(run_dir, tmp_path) -> None:
    """4 KiB overwritten inside a .distcp file: resume=latest falls back to the previous
    good checkpoint with a warning; naming the damaged one is an error."""
    run = _copy(run_dir, tmp_path)
    damaged = os.path.join(run, "checkpoints", "step_00000004")
    data = next(os.path.join(damaged, n) for n in os.listdir(damaged) if n.endswith(".distcp"))
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        f.write(os.urandom(4096))
    destroy_group()
    base = tiny(tmp_path, "run.name=" + os.path.basename(run), "train.steps=5", "train.eval_every=0", "run.plots=false")
    with pytest.raises(ValueError, match="step_00000004' is damaged: __0_0.distcp"):
        Trainer(load_config(overrides=base + ["run.resume=" + damaged]))
    destroy_group()
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint: .*step_00000004"):
        trainer = Trainer(load_config(overrides=base + ["run.resume=latest"]))
    assert trainer.step == 2  # the previous good checkpoint
    summary = trainer.fit()
    destroy_group()
    assert summary.train_loss == summary.train_loss  # finite


def _cli_args(overrides: list) -> list:
    return [a for o in overrides for a in ("--set", o)]


def test_a_diverging_run_stops_with_exit_2(tmp_path, capsys) -> None:
    code = train_main(_cli_args(tiny(tmp_path, "run.name=nan", "train.steps=20", "train.eval_every=0",
                                     "optim.lr=1e10", "optim.embedding_lr=1e10", "optim.grad_clip_norm=none",
                                     "run.plots=false")))
    destroy_group()
    err = capsys.readouterr().err
    assert code == 2 and "training loss is not finite (NaN or inf) at step" in err
    assert err.count("\n") == 1  # one line
    assert not os.listdir(tmp_path / "nan" / "checkpoints")  # nothing saved after it


# ----------------------------------------------------------------- lost data
def test_a_new_run_never_overwrites_another(run_dir, tmp_path) -> None:
    run = _copy(run_dir, tmp_path)
    name = "run.name=" + os.path.basename(run)
    destroy_group()
    with pytest.raises(ValueError, match="already holds a run .*run.resume=latest.*run.overwrite=true"):
        Trainer(load_config(overrides=tiny(tmp_path, name, "train.steps=1")))
    destroy_group()
    assert len(os.listdir(os.path.join(run, "checkpoints"))) == 2  # untouched
    Trainer(load_config(overrides=tiny(tmp_path, name, "train.steps=1", "run.overwrite=true",
                                       "run.plots=false", "train.eval_every=0"))).fit()
    destroy_group()
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["step_00000001"]


def test_two_processes_never_share_a_run_directory(tmp_path) -> None:
    """A second process on a locked run directory stops at once (metrics.jsonl of the
    first is never interleaved)."""
    run = tmp_path / "busy"
    run.mkdir()
    lock = DirectoryLock(run, "run directory")
    try:
        cmd = [sys.executable, "-m", "torchrec_rankmixer.train", "--set", f"run.out_dir={tmp_path}",
               "--set", "run.name=busy", "--set", "train.steps=1"]
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                              text=True, timeout=300)
    finally:
        lock.release()
    assert proc.returncode == 2
    assert f"run directory '{run}' is in use by another process (pid {os.getpid()})" in proc.stderr


def test_two_exports_never_share_an_output(tmp_path) -> None:
    out = tmp_path / "art"
    out.mkdir()
    lock = DirectoryLock(out, "export output")
    try:
        with pytest.raises(ValueError, match=f"export output '{out}' is in use by another process"):
            export_model(small_model(), out, artifact="export")
    finally:
        lock.release()
    export_model(small_model(), out, artifact="export")
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["metadata.json", "model.pt2"]


def test_predict_refuses_to_overwrite_its_input_or_rename_a_score(artifact, tmp_path, capsys) -> None:
    import pyarrow as pa

    from torchrec_rankmixer.inference.predictor import write_table

    predictor = Predictor(artifact)
    dense, values, lengths = artifact_inputs(3, 0)
    table = {name: [[int(v)] for v in values.reshape(len(predictor.feature_names), -1, 2)[i, :, 0]]
             for i, name in enumerate(predictor.feature_names)}
    table.update({name: dense[:, j].tolist() for j, name in enumerate(predictor.dense_feature_names)})
    path = str(tmp_path / "in.parquet")
    write_table(pa.table({**table, "logit": [1, 2, 3]}), path)
    assert predict_main(["--model", artifact, "--input", path, "--output", path, "--passthrough", "logit"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert predict_main(["--model", artifact, "--input", path, "--passthrough", "logit"]) == 2
    assert "passthrough columns ['logit'] have the names of score columns" in capsys.readouterr().err
    write_table(pa.table({**table, "label": [1, None, 0]}), path)
    assert predict_main(["--model", artifact, "--input", path, "--label-column", "label"]) == 2
    assert "label column 'label' row 1: None is not 0 or 1" in capsys.readouterr().err


# ----------------------------------------------------------------- wrong answers accepted
def test_malformed_kjts_are_refused(artifact) -> None:
    predictor = Predictor(artifact)
    names = predictor.feature_names
    B = 2
    dense = torch.rand(B, len(predictor.dense_feature_names))

    def kjt(values, lengths, keys=names, weights=None):  # type: ignore[no-untyped-def]
        return KeyedJaggedTensor(keys=list(keys), values=torch.tensor(values), lengths=torch.tensor(lengths),
                                 weights=weights)

    ones = [1] * (len(names) * B)
    with pytest.raises(ValueError, match="lengths sum to 9 but it holds 8 values"):
        predictor.predict_kjt(kjt(list(range(8)), ones[:-1] + [2]), dense)
    with pytest.raises(ValueError, match="has a negative length"):
        predictor.predict_kjt(kjt(list(range(8)), [2] + ones[1:-1] + [-1]), dense)
    with pytest.raises(ValueError, match=r"names keys \['f0'\] more than once"):
        predictor.predict_kjt(kjt(list(range(8)), ones, keys=["f0", "f0", "f2", "f3"]), dense)
    with pytest.raises(ValueError, match="carries weights"):
        predictor.predict_kjt(kjt(list(range(8)), ones, weights=torch.ones(8)), dense)


def test_bad_model_sizes_and_inputs_are_refused() -> None:
    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10,
                                                            feature_names=["a"])])
    for sizes, message in [([8, 0], r"over_arch_layer_sizes \(\[8, 0\]\) must hold positive ints; entry 1 is 0"),
                           ([-1, 1], "entry 0 is -1"), ([], "needs at least 2")]:
        with pytest.raises(ValueError, match=message):
            DLRM_RankMixer(ebc, 3, [4], sizes)
    with pytest.raises(ValueError, match=r"dense_arch_layer_sizes \(\[16, 0\]\)"):
        DLRM_RankMixer(ebc, 3, [16, 0], [4, 1])
    with pytest.raises(ValueError, match="has no tables"):
        DLRM_RankMixer(EmbeddingBagCollection(tables=[]), 3, [4], [4, 1])
    model = DLRM_RankMixer(ebc, 3, [4], [4, 1])
    kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([1, 2]), torch.tensor([1, 1]))
    for dense in (torch.rand(2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.int64)):
        with pytest.raises(ValueError, match=f"dense_features has dtype {dense.dtype}; the model takes torch.float32"):
            model(dense, kjt)


def test_a_label_of_two_is_not_scored() -> None:
    with pytest.raises(ValueError, match="labels must be 0 or 1; position 1 holds 2"):
        binary_auc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 2, 1]))


# ----------------------------------------------------------------- unclear before
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_artifacts_name_the_file(artifact, tmp_path, damage) -> None:
    path = str(tmp_path / "model.pt2")
    data = open(artifact, "rb").read()
    with open(path, "wb") as f:
        f.write({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(4096)}[damage])
    with pytest.raises(ValueError, match=f"artifact '{path}'"):
        load_artifact(path)


def test_paths_that_are_files_are_refused(tmp_path) -> None:
    a_file = tmp_path / "x"
    a_file.write_text("")
    with pytest.raises(ValueError, match="run.out_dir .* is a file"):
        load_config(overrides=[f"run.out_dir={a_file}"])
    with pytest.raises(ValueError, match=f"export output '{a_file}' is a file"):
        export_model(small_model(), a_file)


def test_resume_into_another_model_size_is_one_line(run_dir, tmp_path, capsys) -> None:
    run = _copy(run_dir, tmp_path)
    destroy_group()
    args = _cli_args(tiny(tmp_path, "run.name=" + os.path.basename(run), "run.resume=latest",
                          "train.steps=6", "model.rankmixer.d_model=32"))
    assert train_main(args) == 2
    destroy_group()
    err = capsys.readouterr().err
    assert "describe another model" in err and err.count("\n") == 1


def test_a_bad_csv_cell_is_reported_at_its_row(artifact, tmp_path) -> None:
    predictor = Predictor(artifact)
    header = predictor.feature_names + predictor.dense_feature_names
    rows = [[str(i % 5) for _ in predictor.feature_names] + ["0.5" for _ in predictor.dense_feature_names]
            for i in range(700)]
    rows[612][len(predictor.feature_names)] = "n/a"
    path = tmp_path / "in.csv"
    path.write_text(",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=f"dense column '{predictor.dense_feature_names[0]}' row 612: 'n/a' is not a number"):
        predictor.predict_file(str(path), batch_size=256)
