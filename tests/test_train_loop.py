"""In-process (one rank) tests of the training loop: exact resume, ESMM, run directory."""

import json
import os

import pytest
import torch

from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from train_helpers import destroy_group, tiny


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


def test_resume_is_exact(tmp_path):
    """6 steps straight == 3 steps, checkpoint, stop, resume for 3 more (params and optimiser state)."""
    base = tiny(tmp_path, "train.steps=6", "train.eval_every=0", "run.plots=false")
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
