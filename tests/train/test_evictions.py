"""reset_rows on a DMP model: table-wise (fused row-wise Adagrad state) and data-parallel
(dense optimiser state) tables; only the named rows change."""

import pytest
import torch

from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.evictions import reset_rows
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny


@pytest.fixture(autouse=True)
def _fresh_group():
    destroy_group()
    yield
    destroy_group()


def _local(v):
    return (v.local_shards()[0].tensor if hasattr(v, "local_shards") else v).detach().clone()


def _tables_state(trainer):
    out = {k: _local(v) for k, v in trainer.model.state_dict().items() if "embedding_bags" in k}
    for k, per in trainer.optimizer.state_dict()["state"].items():
        if "embedding_bags" in k:
            out.update({f"{k}/{n}": _local(v) for n, v in per.items() if _local(v).dim() >= 1})
    return out


ROWS = {"t_f0": torch.tensor([1, 4]), "t_f3": torch.tensor([2])}


def _trained(tmp_path) -> Trainer:
    """3 steps with a table-wise (fused row-wise Adagrad) and a data-parallel (RMSProp) table."""
    trainer = Trainer(load_config(overrides=tiny(
        tmp_path, "train.steps=3", "train.eval_every=0", "run.plots=false",
        "sharding.sharding_types=[table_wise]", "sharding.constraints={t_f3: [data_parallel]}")))
    trainer.fit()
    return trainer


def _named_rows(before: dict, after: dict):
    """Per state entry: (key, before, after, reset rows, mask of the other rows); checks
    that the other rows are untouched."""
    for k, v in before.items():
        table = next(t for t in ("t_f0", "t_f1", "t_f2", "t_f3") if f".{t}." in k or k.endswith(f".{t}.weight"))
        hit = ROWS.get(table, torch.tensor([], dtype=torch.int64))
        keep = torch.ones(v.shape[0], dtype=torch.bool)
        keep[hit] = False
        assert torch.equal(after[k][keep], v[keep]), k  # other rows untouched
        yield k, v, after[k], hit


def test_reset_rows_zeroes_weights_and_optimizer_state_of_those_rows_only(tmp_path):
    trainer = _trained(tmp_path)
    before = _tables_state(trainer)
    assert any("momentum1" in k for k in before) and any("square_avg" in k for k in before)
    assert reset_rows(trainer.model, trainer.optimizer, ROWS) == 3
    changed = 0
    for k, v, after, hit in _named_rows(before, _tables_state(trainer)):
        assert after[hit].abs().sum() == 0, k  # named rows cleared
        changed += int(v[hit].abs().sum() > 0)
    assert changed >= 4  # weights and optimiser states of both tables really changed
    assert reset_rows(trainer.model, trainer.optimizer, {}) == 0


def test_reset_rows_redraws_weights_from_the_table_init_deterministically(tmp_path):
    trainer = _trained(tmp_path)
    rows = ROWS
    bound = 0.01
    init = {t: (lambda w: torch.nn.init.uniform_(w, -bound, bound)) for t in rows}
    before = _tables_state(trainer)
    assert reset_rows(trainer.model, trainer.optimizer, rows, init, seed=7) == 3
    first = _tables_state(trainer)
    for k, v, after, hit in _named_rows(before, first):
        if k.endswith(".weight") and hit.numel():  # re-drawn inside the init's range
            assert (after[hit].abs() <= bound).all() and (after[hit] != 0).all(), k
            assert not torch.equal(after[hit], v[hit]), k
        elif hit.numel():
            assert after[hit].abs().sum() == 0, k  # optimiser state cleared
    reset_rows(trainer.model, trainer.optimizer, rows, init, seed=7)
    again = _tables_state(trainer)
    assert all(torch.equal(again[k], first[k]) for k in first)  # same seed: the same rows
    reset_rows(trainer.model, trainer.optimizer, rows, init, seed=8)
    other = _tables_state(trainer)
    w0 = next(k for k in first if k.endswith("t_f0.weight"))
    assert not torch.equal(other[w0][rows["t_f0"]], first[w0][rows["t_f0"]])
