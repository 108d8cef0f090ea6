"""Upgrading a run directory written by torchrec-rankmixer 0.1 (tests/train/data/run_v0_1:
a 2-step run trained with the 0.1 code, kept as it was written)."""

import os
import shutil

import pytest
import torch
import yaml
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from torchrec_rankmixer.inference.from_run import load_run_model
from torchrec_rankmixer.run_format import read_spec
from torchrec_rankmixer.train.cli import main
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group

LEGACY = os.path.join(os.path.dirname(__file__), "data", "run_v0_1")
CHECKPOINT = os.path.join("checkpoints", "step_00000002")


def _legacy_weights(tmp_path) -> dict:
    flat = tmp_path / "legacy.pt"
    dcp_to_torch_save(os.path.join(LEGACY, CHECKPOINT), flat)
    model = torch.load(flat, weights_only=True)["model"]
    return {k[len("model."):]: v for k, v in model.items()}  # 0.1: model.<key> under "model"


def test_legacy_run_upgrades_then_exports_and_resumes(tmp_path, capsys):
    run = str(tmp_path / "run_v0_1")
    shutil.copytree(LEGACY, run)
    with pytest.raises(ValueError, match=f"has no spec.json.*rankmixer-train --upgrade-run {run}"):
        load_run_model(run)

    assert main(["--upgrade-run", run]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(run, "config.v0_1.yaml"))
    settings = yaml.safe_load(open(os.path.join(run, "config.yaml")))
    assert settings["model"]["rankmixer"] == {"d_model": 8, "num_tokens": 2, "num_layers": 1, "ffn_mult": 1,
                                              "dropout": 0.0, "block": "rankmixer", "ln_style": "post",
                                              "final_norm": False}
    spec = read_spec(run)
    assert (spec.rankmixer_config.d_model, spec.rankmixer_config.num_tokens) == (8, 2)
    # the block 0.1 trained (the paper's post-LN RankMixer block), not today's default
    assert (spec.rankmixer_config.block, spec.rankmixer_config.ln_style) == ("rankmixer", "post")

    model, ckpt, _ = load_run_model(run)  # the 0.1 weights, exactly
    want = _legacy_weights(tmp_path)
    assert ckpt.step == 2 and set(model.state_dict()) == set(want)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)

    destroy_group()
    cfg = load_config(os.path.join(run, "config.yaml"), [
        f"run.out_dir={tmp_path}", "run.name=run_v0_1", "run.resume=latest", "train.steps=3",
        "train.progress_bar=false"])
    trainer = Trainer(cfg)
    assert trainer.step == 2
    summary = trainer.fit()
    destroy_group()
    assert summary.step == 3 and summary.train_loss == summary.train_loss  # not NaN

    assert main(["--upgrade-run", run]) == 2  # already upgraded
    assert "already has spec.json" in capsys.readouterr().err
