"""utils/settings.py: config files, ``extends`` chains and their errors."""

import pytest

from torchrec_rankmixer.utils.settings import load_file, merge_settings


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_extends_merges_the_base_under_the_file(tmp_path):
    _write(tmp_path / "base.yaml", "optim: {lr: 0.001, dense: adam}\nmodel: {arch: dnn, baseline: {dropout: 0.2}}\n")
    (tmp_path / "sub").mkdir()
    top = _write(tmp_path / "sub" / "top.yaml", "extends: ../base.yaml\noptim: {lr: 0.01}\nmodel: {baseline: {cross_layers: 4}}\n")
    assert load_file(top) == {
        "optim": {"lr": 0.01, "dense": "adam"},
        "model": {"arch": "dnn", "baseline": {"dropout": 0.2, "cross_layers": 4}},
    }


def test_extends_a_list_later_files_win_and_chains_nest(tmp_path):
    _write(tmp_path / "a.yaml", "train: {steps: 1, seed: 1}\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\ntrain: {steps: 2}\n")
    _write(tmp_path / "c.json", '{"train": {"steps": 3, "log_every": 5}}')
    top = _write(tmp_path / "top.yaml", "extends: [b.yaml, c.json]\n")
    assert load_file(top) == {"train": {"steps": 3, "seed": 1, "log_every": 5}}


def test_extends_errors_name_the_files(tmp_path):
    missing = _write(tmp_path / "m.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ValueError, match=r"nowhere.yaml.*extended by.*m.yaml.*does not exist"):
        load_file(missing)
    _write(tmp_path / "x.yaml", "extends: y.yaml\n")
    _write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_file(str(tmp_path / "x.yaml"))
    bad = _write(tmp_path / "bad.yaml", "extends: {a: 1}\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*extends .*must be a file name"):
        load_file(bad)


def test_merge_replaces_non_mappings():
    assert merge_settings({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": 5}) == {"a": [3], "b": 5}
