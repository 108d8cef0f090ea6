"""benchmarks/quality.py: the suite's commands, results file, tables and one real run."""

import json
import os
import statistics

import pytest

from benchmarks import quality


def _record(dataset: str, model: str, seed: int, test: float, **extra) -> dict:
    return {"dataset": dataset, "model": model, "seed": seed, "command": "c", "date": "2026-11-30",
            "machine": "m", "valid_auc": test + 0.001, "test_auc": test, "test_logloss": 0.4,
            "best_step": 100, "steps": 100, "minutes": 1.0, **extra}


def test_every_dataset_has_a_config_for_every_model_it_lists() -> None:
    for dataset in quality.DATASETS:
        models = quality.suite_models(dataset, quality.MODELS)
        assert quality.REFERENCE_MODEL in models and "rankmixer" in models, dataset
        for model in models:
            cfg = quality.load_config(os.path.join(quality.ROOT, quality.config_path(dataset, model)))
            assert cfg.train.restore_best and (cfg.data.test_files or cfg.data.test_batches), (dataset, model)


def test_the_default_swap_config_sets_no_rankmixer_field() -> None:
    # "rankmixer" must be exactly the one-line swap: DLRM_RankMixer with no config
    for dataset in quality.DATASETS:
        cfg = quality.load_config(os.path.join(quality.ROOT, quality.config_path(dataset, "rankmixer")))
        assert cfg.model.arch == "rankmixer" and not cfg.model.rankmixer, dataset
        assert cfg.model.interaction == "auto", dataset  # the model's own rule decides


def test_rows_measured_without_the_interaction_pin_it() -> None:
    """The rows kept from before the dot interaction became the default (the previous
    defaults, the paper's model, TokenMixer-Large at k = 4) must still build what they
    measured: the encoder alone."""
    for dataset in quality.DATASETS:
        for model in ("rankmixer_nodot", "rankmixer_preln", "rankmixer_paper", "tokenmixer_large"):
            cfg = quality.load_config(os.path.join(quality.ROOT, quality.config_path(dataset, model)))
            assert cfg.model.interaction == "none", (dataset, model)


def test_merge_replaces_a_rerun_and_keeps_the_rest() -> None:
    old = [_record("synthetic", "dnn", 1, 0.60), _record("synthetic", "dnn", 2, 0.61)]
    new = [_record("synthetic", "dnn", 1, 0.70), {**_record("synthetic", "dnn", 3, 0.0), "error": "exit 1"}]
    merged = quality.merge_runs(old, new)
    assert [(r["seed"], r["test_auc"]) for r in merged] == [(1, 0.70), (2, 0.61)]  # failed run not merged


def test_render_shows_mean_spread_and_delta_to_the_reference() -> None:
    runs = [_record("synthetic_affinity", "dlrm_dcn", s, t) for s, t in ((1, 0.80), (2, 0.82))]
    runs += [_record("synthetic_affinity", "rankmixer", s, t) for s, t in ((1, 0.83), (2, 0.84))]
    text = quality.render({"runs": runs, "oracle_auc": {"synthetic_affinity": 0.8565}})
    assert "oracle test AUC 0.8565" in text
    row = next(line for line in text.splitlines() if line.startswith("| rankmixer |"))
    std = statistics.stdev([0.83, 0.84])
    assert f"0.8350 ± {std:.4f}" in row and "0.8300 / 0.8400" in row and "+0.0250" in row
    assert text.index("| dlrm_dcn |") < text.index("| rankmixer |")


def test_render_adds_the_published_column_for_frappe() -> None:
    text = quality.render({"runs": [_record("frappe_x1", "dcnv2", 1, 0.984)]})
    assert "published" in text and "| 0.9845 |" in text


def test_write_doc_replaces_only_the_marked_section(tmp_path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text(f"# B\nkeep\n{quality.BEGIN}\nold table\n{quality.END}\nafter\n")
    quality.write_doc(str(doc), "new table\n")
    assert doc.read_text() == f"# B\nkeep\n{quality.BEGIN}\nnew table\n{quality.END}\nafter\n"
    bare = tmp_path / "c.md"
    bare.write_text("no markers\n")
    with pytest.raises(ValueError, match="c.md.*markers"):
        quality.write_doc(str(bare), "t")


def test_dry_run_prints_one_command_per_model_and_seed(capsys) -> None:
    assert quality.main(["--datasets", "synthetic", "--models", "dnn", "rankmixer", "--seeds", "1", "2",
                         "--dry-run", "--results", os.devnull]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all("torchrec_rankmixer.train --config configs/synthetic/" in line for line in lines)
    assert "--train.seed 2" in lines[-1]


def test_a_real_run_lands_in_the_results_and_the_doc(tmp_path, monkeypatch) -> None:
    tiny = ["--train.steps", "2", "--train.eval_every", "1", "--data.eval_batches", "1",
            "--data.test_batches", "1", "--data.batch_size", "64", "--data.eval_batch_size", "256"]
    real = quality.run_command
    monkeypatch.setattr(quality, "run_command", lambda *a: real(*a) + tiny)
    doc = tmp_path / "b.md"
    doc.write_text(f"{quality.BEGIN}\n{quality.END}\n")
    results = tmp_path / "q.json"
    rc = quality.main(["--datasets", "synthetic", "--models", "dnn", "--seeds", "7", "--jobs", "1",
                       "--work-dir", str(tmp_path / "runs"), "--results", str(results), "--doc", str(doc)])
    assert rc == 0
    data = json.loads(results.read_text())
    (run,) = data["runs"]
    assert (run["dataset"], run["model"], run["seed"], run["steps"]) == ("synthetic", "dnn", 7, 2)
    assert run["command"] == "rankmixer-train --config configs/synthetic/dnn.yaml --train.seed 7"
    assert 0.0 < run["test_auc"] < 1.0 and 0.5 < data["oracle_auc"]["synthetic"] <= 1.0
    assert "| dnn | 7 |" in doc.read_text()


def test_option_rows_build_what_they_measured() -> None:
    """`rankmixer_dot_cross` pins the cross layers (rank 64) beside the dot products on
    every data set; `rankmixer_deep` (Frappe) is the default swap plus BARS's DNN as the deep branch."""
    for dataset in quality.DATASETS:
        cfg = quality.load_config(os.path.join(quality.ROOT, quality.config_path(dataset, "rankmixer_dot_cross")))
        assert cfg.model.interaction == "dot_cross" and not cfg.model.deep, dataset
        assert (cfg.model.dcn_num_layers, cfg.model.dcn_low_rank_dim) == (None, 64), dataset  # 3 layers of rank 64
    assert quality.suite_models("frappe_x1", ["rankmixer_deep"]) == ["rankmixer_deep"]
    assert quality.suite_models("synthetic", ["rankmixer_deep"]) == []
    cfg = quality.load_config(os.path.join(quality.ROOT, quality.config_path("frappe_x1", "rankmixer_deep")))
    assert cfg.model.interaction == "dot"
    assert cfg.model.deep == {"layer_sizes": [400, 400, 400], "dropout": 0.2}
