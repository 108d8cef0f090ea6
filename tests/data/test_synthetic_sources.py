"""data/synthetic_sources.py: the synthetic formats as rankmixer-train reads them (cursor
addressing, rank shares, valid/test splits, settings errors), and a short run on each
entity family."""

import json
import os

import pytest
import torch

from torchrec_rankmixer.data.settings import DataSettings
from torchrec_rankmixer.data.sources import make_source
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET, TEST_OFFSET
from torchrec_rankmixer.data.synthetic_families import ContextRuleData, LatentAffinityData
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny

FAMILIES = [("synthetic_affinity", "affinity", LatentAffinityData),
            ("synthetic_context_rules", "context_rules", ContextRuleData)]


@pytest.mark.parametrize("fmt,section,cls", FAMILIES)
def test_family_batches_follow_the_cursor_and_the_settings(fmt, section, cls):
    data = DataSettings(format=fmt, batch_size=8, eval_batch_size=16, eval_batches=3, test_batches=2)
    setattr(data, section, type(getattr(data, section))(num_users=40, num_items=30, seed=3))
    data.validate()
    src = make_source(data, two_labels=False, rank=1, world_size=2)
    ref = cls(num_users=40, num_items=30, seed=3)
    assert [c.num_embeddings for c in src.table_configs(4)] == list(ref.cardinalities.values())
    got = list(src.train_batches(cursor=6, rank=1, world_size=2, num=2))
    for b, index in zip(got, (7, 9)):  # global batches cursor + i * W + rank
        want = ref.batch(8, index)
        assert torch.equal(b.sparse_features.values(), want.sparse_features.values())
        assert torch.equal(b.labels, want.labels)
    valid = list(src.eval_batch_iter(1, 2, "valid"))
    test = list(src.eval_batch_iter(1, 2, "test"))
    assert len(valid) == 2 and len(test) == 1  # ceil(3 / 2), ceil(2 / 2)
    assert torch.equal(valid[0].labels, ref.batch(16, EVAL_OFFSET + 1).labels)
    assert torch.equal(test[0].labels, ref.batch(16, TEST_OFFSET + 1).labels)
    assert src.dense_in_features == 1 and src.user_feature == "user_id"


def test_family_settings_errors_name_the_setting():
    with pytest.raises(ValueError, match=r"data.affinity.num_users \(1\) must be an int >= 2"):
        load_config(overrides=["data.format=synthetic_affinity", "data.affinity.num_users=1"])
    with pytest.raises(ValueError, match=r"data.context_rules.flip_fraction \(2.0\) must be in \[0, 1\]"):
        load_config(overrides=["data.format=synthetic_context_rules", "data.context_rules.flip_fraction=2.0"])
    with pytest.raises(ValueError, match="unknown setting 'data.affinity.rule_strength'"):
        load_config(overrides=["data.affinity.rule_strength=1"])
    with pytest.raises(ValueError, match="has one label; model.task='esmm' needs two"):
        make_source(DataSettings(format="synthetic_affinity"), two_labels=True, rank=0, world_size=1)


@pytest.mark.parametrize("fmt", ["synthetic_affinity", "synthetic_context_rules"])
def test_a_short_run_on_each_family_learns_and_scores_the_test_set(tmp_path, fmt):
    cfg = load_config(overrides=tiny(
        tmp_path, "run.name=f", "run.plots=false", f"data.format={fmt}", "data.batch_size=256",
        "train.steps=30", "train.eval_every=30", "data.test_batches=2", "optim.dense=adam",
        "optim.lr=0.005", "optim.warmup_steps=0", "model.rankmixer.num_tokens=4"))
    summary = Trainer(cfg).fit()
    destroy_group()
    recs = [json.loads(x) for x in open(os.path.join(tmp_path, "f", "metrics.jsonl"))]
    assert summary.metrics["ctr_auc"] > 0.55  # 30 steps of Zipf-popular entities already rank
    assert recs[-1]["test_ctr_auc"] == pytest.approx(summary.test_metrics["ctr_auc"])
    spec = json.load(open(os.path.join(tmp_path, "f", "spec.json")))
    assert [t["name"] for t in spec["tables"]][:2] == ["t_user_id", "t_user_age"]
