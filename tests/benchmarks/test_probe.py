"""benchmarks/quality_probe.py and its model/variant builders, on tiny synthetic data."""

import json
import sys

import pytest
import torch

from benchmarks import probe_models, probe_variants, quality_probe
from torchrec_rankmixer.data.synthetic_families import ContextRuleData

DATA = ContextRuleData(num_users=50, num_items=30)
TABLES = DATA.table_configs(8)


def _forward(model, batch: int = 6) -> torch.Tensor:
    b = DATA.batch(batch, 0)
    return model(b.dense_features, b.sparse_features)


@pytest.mark.parametrize("name", list(probe_models.BASE_MODELS) + ["rm:prenf+glu", "rm:perfeat+global", "rm:tml"])
def test_every_model_gives_one_logit_per_sample(name: str) -> None:
    sizes = probe_models.ProbeSizes(over_hidden=[16, 8])
    assert _forward(probe_models.build(name, TABLES, DATA.dense_in_features, sizes, seed=1)).shape == (6, 1)


def test_all_models_share_the_embedding_init_of_a_seed() -> None:
    sizes = probe_models.ProbeSizes(over_hidden=[16, 8])
    first = [probe_models.embedding_params(probe_models.build(n, TABLES, 1, sizes, seed=3))[0] for n in ("dnn", "rankmixer")]
    assert torch.equal(first[0], first[1])
    normal = probe_models.embedding_params(probe_models.build("dnn", TABLES, 1, sizes, seed=3, emb_init="normal"))[0]
    assert float(normal.std()) < 1e-3  # FuxiCTR's normal(std=1e-4)


def test_the_default_swap_is_dlrm_rankmixer_without_a_config() -> None:
    from torchrec_rankmixer.models.defaults import default_config

    model = probe_models.build("rankmixer", TABLES, 1, probe_models.ProbeSizes(), seed=1)
    assert model.config == default_config(len(DATA.feature_names), 1)  # 7 auto tokens + 1 dense


def test_variant_atoms_change_one_thing_each() -> None:
    spec = probe_variants.parse("prenf+h4+lr1e-3+wu50+perfeat")
    assert spec["config"] == {"ln_style": "pre", "num_heads": 4, "strict_heads": False}
    assert spec["lr"] == 1e-3 and spec["warmup"] == 50 and spec["tokens"] == "perfeat"
    model = probe_variants.build_rankmixer_variant("prenf+perfeat", probe_models.make_ebc(TABLES, 0), 1, [8], [16, 1])
    assert model.config.ln_style == "pre" and not model.config.final_norm
    assert model.config.num_tokens == len(DATA.feature_names) + 1  # one token per feature + dense


def test_glu_atom_swaps_every_block_ffn() -> None:
    model = probe_variants.build_rankmixer_variant("glu", probe_models.make_ebc(TABLES, 0), 1, [8], [16, 1])
    assert all(isinstance(b.ffn, probe_variants.ProbeGLU) for b in model.encoder.blocks)


def test_unknown_atom_and_model_raise() -> None:
    with pytest.raises(ValueError, match="unknown variant atom 'prelude'"):
        probe_variants.parse("pre+prelude")
    with pytest.raises(ValueError, match=r"model \('xgb'\)"):
        probe_models.build("xgb", TABLES, 1, probe_models.ProbeSizes(), seed=1)


def test_warmup_ramps_linearly() -> None:
    assert [probe_models.lr_at(s, 1.0, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert probe_models.lr_at(0, 0.1, 0) == 0.1


def test_probe_writes_one_row_per_model_with_disjoint_splits(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(quality_probe.SYNTHETIC, "context_rules", lambda: DATA)
    monkeypatch.setattr(quality_probe, "EVAL_BATCH", 256)
    out = tmp_path / "probe.jsonl"
    argv = ["quality_probe.py", "--datasets", "context_rules", "--models", "dnn", "rm:prenf", "--steps", "4",
            "--batch", "64", "--eval-every", "2", "--valid-batches", "2", "--test-batches", "2",
            "--emb-dim", "8", "--oracle", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    quality_probe.main()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["oracle", "dnn", "rm:prenf"]
    for r in rows[1:]:
        assert abs(max(r["valid_curve"]) - r["valid_auc"]) < 1e-5 and len(r["valid_curve"]) == 2  # best restored
        assert 0.0 < r["test_auc"] < 1.0 and r["date"] and "quality_probe.py" in r["command"]
    assert quality_probe.VALID_START + 2 <= quality_probe.TEST_START  # valid and test never overlap
