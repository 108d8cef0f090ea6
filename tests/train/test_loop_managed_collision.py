"""rankmixer-train with data.id_transform=managed_collision: exact resume on one process
(raw 64-bit ids from a CSV, tables small enough to evict) and a 2-process torchrun run whose
checkpointed mapping equals one remapper fed the global batches."""

import json
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.data.sources import SyntheticSource
from torchrec_rankmixer.data.sources import build_remapper
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.run_format import ID_REMAP_KEY
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny, torchrun_train



@pytest.fixture(autouse=True)
def _fresh_group():
    destroy_group()
    yield
    destroy_group()


def _write_csv(path, rows: int = 96) -> None:
    g = torch.Generator().manual_seed(0)
    lines = ["label,user,item,ctx"]
    for _ in range(rows):
        u, i = (torch.rand(2, generator=g) ** 2 * 30).long().tolist()
        lines.append(f"{int((u + i) % 3 == 0)},{10**15 + 7919 * u},{-(2**60) + i},{(u * i) % 11}")  # raw 64-bit ids
    path.write_text("\n".join(lines) + "\n")


def _local(t):
    return (t.local_shards()[0].tensor if hasattr(t, "local_shards") else t).detach().clone()


def _snapshot(trainer: Trainer) -> dict:
    out = {f"model.{k}": _local(v) for k, v in trainer.model.state_dict().items()}
    for k, v in trainer.optimizer.state_dict()["state"].items():
        for name, t in (v.items() if isinstance(v, dict) else []):
            if isinstance(t, torch.Tensor) or hasattr(t, "local_shards"):
                out[f"optim.{k}.{name}"] = _local(t)
    out.update({f"remap.{k}": v.clone() for k, v in trainer.remapper.state_dict().items()})
    return out


def test_resume_is_exact_with_managed_collision(tmp_path):
    """6 steps straight == 3 steps + checkpoint + resume 3 (model, optimisers, id mapping),
    with LRU evictions at every step (8-row tables, about 30 ids each) and evicted rows
    reset before the forward of the batch that evicted them (the pipeline remaps ahead)."""
    train = tmp_path / "train.csv"
    _write_csv(train)
    base = tiny(tmp_path, "data.format=csv", f"data.train_files=[{train}]", f"data.eval_files=[{train}]",
                "data.sparse_columns=[user, item, ctx]", "data.user_column=user", "data.num_embeddings=8",
                "data.id_transform=managed_collision", "data.managed_collision.eviction_policy=lru",
                "model.rankmixer.num_tokens=3", "model.rankmixer.d_model=12", "train.steps=6", "train.eval_every=0",
                "run.plots=false")
    straight = Trainer(load_config(overrides=base + ["run.name=straight"]))
    summary = straight.fit()
    want = _snapshot(straight)
    assert {"ctr_auc", "ctr_gauc"} <= set(summary.metrics)
    assert all(int(v) == 0 for v in straight.remapper.collection.open_slots().values())  # tables full
    assert straight.feeder.evicted_rows > 0  # rows were handed to new ids (and reset)
    destroy_group()

    Trainer(load_config(overrides=base + ["run.name=split", "train.steps=3", "run.checkpoint_every=3"])).fit()
    destroy_group()
    resumed = Trainer(load_config(overrides=base + ["run.name=split", "run.resume=latest"]))
    assert (resumed.step, resumed.cursor) == (3, 3)
    resumed.fit()
    got = _snapshot(resumed)
    assert want.keys() == got.keys() and any(k.startswith("remap.") for k in want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)


def test_two_process_run_checkpoints_the_mapping_of_the_global_batches(tmp_path):
    steps = 4
    overrides = tiny(tmp_path, f"train.steps={steps}", "train.eval_every=0", "run.checkpoint_every=4",
                     "run.name=mc2", "run.plots=false", "data.id_transform=managed_collision",
                     "data.managed_collision.eviction_policy=lru", "data.synthetic.num_embeddings=24",
                     "sharding.sharding_types=[table_wise]", "sharding.constraints={t_f3: [data_parallel]}")
    assert "eval_ctr_auc" in torchrun_train(overrides)

    cfg = load_config(overrides=overrides)
    source = SyntheticSource(cfg.data)
    reference = build_remapper(cfg.data, source.table_configs(8))  # one process: no collective
    for step in range(steps):  # global batch of step s: rank 0's batch 2s, then rank 1's 2s + 1
        parts = [source.data.batch(cfg.data.batch_size, 2 * step + r).sparse_features for r in (0, 1)]
        keys = parts[0].keys()
        reference(KeyedJaggedTensor.from_jt_dict(
            {k: _cat_jt(parts[0][k], parts[1][k]) for k in keys}))
    ckpt = os.path.join(tmp_path, "mc2", "checkpoints", f"step_{steps:08d}")
    saved = {k: torch.empty_like(v) for k, v in reference.state_dict().items()}
    dcp.load({ID_REMAP_KEY: saved}, checkpoint_id=ckpt, no_dist=True)
    for k, v in reference.state_dict().items():
        assert torch.equal(saved[k], v), k
    assert int(saved["collection._managed_collision_modules.t_f0._current_iter_tensor"]) == steps

    resumed = Trainer(load_config(overrides=overrides + [f"run.resume={ckpt}", f"train.steps={steps + 1}",
                                                         "run.checkpoint_every=0", "run.name=one"]))
    for k, v in reference.state_dict().items():  # the 2-process mapping, loaded on 1 process
        assert torch.equal(resumed.remapper.state_dict()[k], v), k
    assert resumed.fit().step == steps + 1
    assert int(resumed.remapper.state_dict()["collection._managed_collision_modules.t_f0._current_iter_tensor"]) == steps + 1


def _cat_jt(a, b):
    from torchrec.sparse.jagged_tensor import JaggedTensor

    return JaggedTensor(values=torch.cat([a.values(), b.values()]), lengths=torch.cat([a.lengths(), b.lengths()]))


def test_moe_calibration_sees_remapped_ids(tmp_path):
    """The end-of-training Sparse-MoE calibration runs its batches through the (read-only)
    id remapper like eval does: raw ids far outside the tables must not reach the EBC."""
    moe = "model.rankmixer={use_moe: true, moe_num_experts: 4, moe_target_active_ratio: 0.5}"
    cfg = load_config(overrides=tiny(tmp_path, moe, "train.steps=2", "train.eval_every=0", "run.plots=false",
                                     "train.calibrate_moe_batches=2", "data.id_transform=managed_collision",
                                     "data.managed_collision.input_hash_size=1000000000", "run.name=mcmoe"))
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary.metrics["ctr_auc"] == summary.metrics["ctr_auc"]  # finite, eval ran
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "mcmoe", "metrics.jsonl"))]
    assert any("moe_calib_0_ratio_after" in r for r in recs)
    seen = []
    remap = trainer.remapper.remap_batch

    def spy(batch):
        seen.append(trainer.remapper.training)
        return remap(batch)

    trainer.remapper.remap_batch = spy
    assert trainer.calibrate_moe()  # calibrates again, on 2 batches
    assert seen == [False, False]  # every calibration batch remapped, read-only
