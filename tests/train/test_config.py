"""Settings: files, overrides, CLI flags and every validation error."""

import json

import pytest

from torchrec_rankmixer.train.cli import main, parse_args
from torchrec_rankmixer.train.config import TrainConfig, load_config
from torchrec_rankmixer.utils.settings import apply_override, parse_value


def test_defaults_use_the_paper_optimisers():
    cfg = load_config()
    assert isinstance(cfg, TrainConfig)
    # the paper's optimisers; lr 0.001 instead of its 0.01 (see docs/training.md, optim)
    assert (cfg.optim.dense, cfg.optim.lr, cfg.optim.embedding) == ("rmsprop", 0.001, "row_wise_adagrad")
    assert cfg.data.format == "synthetic" and cfg.model.task == "ctr"


def test_yaml_and_json_files_then_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  rankmixer: {d_model: 32, num_tokens: 4}\noptim:\n  dense: adam\n")
    cfg = load_config(str(y), ["optim.lr=1e-3", "data.table_sizes={a: 10}", "model.rankmixer.num_layers=3"])
    assert cfg.model.rankmixer == {"d_model": 32, "num_tokens": 4, "num_layers": 3}
    assert (cfg.optim.dense, cfg.optim.lr) == ("adam", 0.001)
    assert cfg.data.table_sizes == {"a": 10}
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"train": {"steps": 7}}))
    assert load_config(str(j)).train.steps == 7


@pytest.mark.parametrize("text,value", [
    ("64", 64), ("1e-3", 0.001), ("true", True), ("[1, 2]", [1, 2]), ("none", None), ("adam", "adam"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_cli_flags_are_overrides():
    path, overrides, printed, verbose, upgrade = parse_args(
        ["--config", "x.yaml", "--set", "model.rankmixer.d_model=8", "--train.steps", "5", "--optim.dense=adam"]
    )
    assert path == "x.yaml" and not printed and not verbose and upgrade is None
    assert overrides == ["model.rankmixer.d_model=8", "train.steps=5", "optim.dense=adam"]


def test_cli_rejects_stray_argument():
    with pytest.raises(SystemExit):
        parse_args(["steps"])


def test_cli_print_config_and_config_error(capsys):
    assert main(["--print-config", "--set", "train.steps=3"]) == 0
    assert "steps: 3" in capsys.readouterr().out
    assert main(["--set", "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,message", [
    ("model.d_modle=64", "unknown setting 'model.d_modle'"),
    ("modle.d_model=64", "unknown setting 'modle'"),
    ("model.d_model=64", "setting 'model.d_model' is now 'model.rankmixer.d_model'"),
    ("model.dropout=0.1", "setting 'model.dropout' is now 'model.rankmixer.dropout'"),
    ("model.embedding_dim=abc", "model.embedding_dim ('abc') must be an int"),
    ("train.progress_bar=3", "train.progress_bar (3) must be a bool"),
    ("model.dense_arch_layer_sizes=5", "model.dense_arch_layer_sizes (5) must be a list"),
    ("model.embedding_dim=0", "model.embedding_dim (0) must be a positive int"),
    ("model.tokenization=rows", "model.tokenization ('rows') must be one of"),
    ("model.task=mmoe", "model.task ('mmoe') must be one of"),
    ("model.over_arch_layer_sizes=[1]", "model.over_arch_layer_sizes ([1]) needs at least 2"),
    ("model.tower_layer_sizes=[0]", "model.tower_layer_sizes ([0]) must hold positive ints"),
    ("model.dense_arch_layer_sizes=[]", "model.dense_arch_layer_sizes ([]) needs at least 1"),
    ("model.cvr_loss_weight=-1", "model.cvr_loss_weight (-1.0) must be >= 0"),
    ("model.over_arch_init=he", "model.over_arch_init ('he') must be one of ['torch', 'xavier']"),
    (["model.arch=dnn", "model.over_arch_init=torch"], "model.over_arch_init ('torch') is for model.arch='rankmixer'"),
    ("model.dot_norm=layer", "model.dot_norm ('layer') must be one of ['auto', 'none', 'batch']"),
    (["model.arch=dnn", "model.dot_norm=batch"], "model.dot_norm ('batch') is for model.arch='rankmixer'"),
    ("model.cvr_loss_weight=1", "needs model.task='esmm'"),
    ("data.format=avro", "data.format ('avro') must be one of"),
    ("data.batch_size=0", "data.batch_size (0) must be a positive int"),
    ("data.eval_batches=-1", "data.eval_batches (-1) must be an int >= 0"),
    ("data.dense_transform=sqrt", "data.dense_transform ('sqrt') must be one of"),
    ("data.max_malformed_fraction=2", "data.max_malformed_fraction (2.0) must be in [0, 1]"),
    ("data.table_sizes={a: 0}", "data.table_sizes.a (0) must be a positive int"),
    ("data.bucket_boundaries={x: [2, 1]}", "data.bucket_boundaries.x ([2.0, 1.0]) must be"),
    ("data.synthetic.num_embeddings=0", "data.synthetic.num_embeddings (0) must be a positive int"),
    ("data.synthetic.num_interactions=-1", "data.synthetic.num_interactions (-1) must be an int >= 0"),
    ("data.format=csv", "data.train_files is empty"),
    ("optim.dense=lamb", "optim.dense ('lamb') must be one of"),
    ("optim.embedding=lamb", "optim.embedding ('lamb') must be one of"),
    ("optim.decay=step", "optim.decay ('step') must be one of"),
    ("optim.lr=0", "optim.lr (0.0) must be > 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps (-1) must be >= 0"),
    ("optim.decay_steps=0", "optim.decay_steps (0) must be > 0"),
    ("optim.min_lr_ratio=2", "optim.min_lr_ratio (2.0) must be in [0, 1]"),
    ("optim.grad_clip_norm=0", "optim.grad_clip_norm (0.0) must be > 0"),
    ("sharding.sharding_types=[]", "must name at least one type"),
    ("sharding.sharding_types=[grid]", "sharding.sharding_types ('grid') must be one of"),
    ("sharding.constraints={t: [grid]}", "sharding.constraints.t ('grid') must be one of"),
    ("sharding.hbm_gb=0", "sharding.hbm_gb (0.0) must be > 0"),
    ("train.steps=0", "train.steps (0) must be > 0"),
    ("train.eval_every=-1", "train.eval_every (-1) must be >= 0"),
    ("train.log_every=0", "train.log_every (0) must be > 0"),
    ("train.device=tpu", "train.device ('tpu') must be one of"),
    ("train.precision=fp8", "train.precision ('fp8') must be one of"),
    ("run.checkpoint_every=-1", "run.checkpoint_every (-1) must be >= 0"),
    ("run.out_dir=''", "run.out_dir ('') must name a directory"),
    ("nodot", "must look like section.key=value"),
    ("model.rankmixer={use_mo: true}", "model.rankmixer names ['use_mo']"),
    ("train.num_threads=0", "train.num_threads (0) must be > 0"),
    ("train.keep_freed_memory=sometimes", "train.keep_freed_memory ('sometimes') must be a bool"),
    ("data.managed_collision.eviction_policy=fifo", "data.managed_collision.eviction_policy ('fifo') must be one of"),
    ("data.managed_collision.eviction_interval=0", "data.managed_collision.eviction_interval (0) must be a positive int"),
    ("data.managed_collision.decay_exponent=0", "data.managed_collision.decay_exponent (0.0) must be > 0"),
    ("data.managed_collision.input_hash_size=1", "data.managed_collision.input_hash_size (1) must be >= 2"),
    ("data.managed_collision.evicted_row_init=random", "data.managed_collision.evicted_row_init ('random') must be one of"),
    (["data.id_transform=managed_collision", "data.synthetic.num_embeddings=1"],
     "data.synthetic.num_embeddings (1) must be >= 2 with data.id_transform='managed_collision'"),
    (["data.id_transform=managed_collision", "data.format=csv", "data.train_files=[x.csv]",
      "data.sparse_columns=[a]", "data.table_sizes={a: 1}"], "data.table_sizes.a (1) must be >= 2"),
    (["data.id_transform=managed_collision", "data.managed_collision.eviction_interval=4",
      "run.checkpoint_every=6"], "run.checkpoint_every (6) must be a multiple of data.managed_collision.eviction_interval (4)"),
])
def test_bad_settings_name_the_key(overrides, message):
    """``overrides``: one setting, or a list of them."""
    with pytest.raises(ValueError) as err:
        load_config(overrides=[overrides] if isinstance(overrides, str) else overrides)
    assert message in str(err.value)


def test_csv_needs_columns_and_esmm_needs_second_label():
    with pytest.raises(ValueError, match="data.sparse_columns is empty"):
        load_config(overrides=["data.format=csv", "data.train_files=[a.csv]"])
    with pytest.raises(ValueError, match="data.label2_column"):
        load_config(overrides=["data.format=criteo", "data.train_files=[a.tsv]", "model.task=esmm"])


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="is not valid"):
        load_config(str(broken))


def test_override_into_non_section():
    d = {"model": 3}
    with pytest.raises(ValueError, match="is not a section"):
        apply_override(d, "model.rankmixer=4")


def test_dot_norm_setting_follows_the_model_rule():
    """Left out, model.dot_norm is the model's rule ("batch" with dot products); "none"
    keeps the raw products; "batch" without dot products names the setting."""
    from torchrec_rankmixer.data.sources import SyntheticSource
    from torchrec_rankmixer.train.build import model_spec

    def spec(*overrides: str):  # type: ignore[no-untyped-def]
        cfg = load_config(overrides=["model.dense_arch_layer_sizes=[32, 16]", *overrides])
        return model_spec(cfg, SyntheticSource(cfg.data))

    assert load_config().model.dot_norm == "auto"
    default = spec()
    assert default.dot_norm == "batch" and default.build().interaction_proj.in_features == 2 * 36  # 9 vectors
    assert spec("model.dot_norm=none").dot_norm == "none"  # "none" parses as null: still "none"
    assert spec("model.interaction=cross").dot_norm == "none"
    with pytest.raises(ValueError, match=r"model.dot_norm: dot_norm 'batch' normalises the dot products, "
                                         r"which interaction 'cross' does not have"):
        spec("model.interaction=cross", "model.dot_norm=batch")


def test_interaction_setting_follows_the_model_rule():
    """Left out, model.interaction is the model's rule ("dot_cross" for one width
    everywhere, its rank capped at a third of the cross width, else "none"); the cross
    sizes default to TorchRec dlrm_main's; a bad value, or one set
    for a baseline arch or an interaction without cross layers, names the setting."""
    from torchrec_rankmixer.data.sources import SyntheticSource
    from torchrec_rankmixer import DLRM_RankMixer
    from torchrec_rankmixer.train.build import model_spec

    cfg = load_config(overrides=["model.dense_arch_layer_sizes=[32, 16]"])  # tables are 16 wide
    spec = model_spec(cfg, SyntheticSource(cfg.data))
    assert (spec.interaction, spec.dcn_num_layers, spec.dcn_low_rank_dim) == ("dot_cross", 3, 48)  # W = 8 x 16 + 16
    assert spec.build().cross_net.V_kernels.shape == (3, 48, 144)
    from torchrec import EmbeddingBagCollection  # the model's own rule gives the trainer's rank

    direct = DLRM_RankMixer(EmbeddingBagCollection(tables=[t.to_config() for t in spec.tables]),
                            spec.dense_in_features, list(spec.dense_arch_layer_sizes), [8, 1])
    assert (direct.interaction, direct.recipe()["dcn_num_layers"], direct.recipe()["dcn_low_rank_dim"]) == \
        ("dot_cross", 3, 48)
    cfg = load_config(overrides=["model.dense_arch_layer_sizes=[32, 16]", "model.dcn_low_rank_dim=24"])
    assert model_spec(cfg, SyntheticSource(cfg.data)).dcn_low_rank_dim == 24  # under the cap: as given
    cfg = load_config(overrides=["model.dense_arch_layer_sizes=[32, 8]"])
    assert model_spec(cfg, SyntheticSource(cfg.data)).interaction == "none"
    cfg = load_config(overrides=["model.interaction=dot_cross", "model.dense_arch_layer_sizes=[32, 16]"])
    spec = model_spec(cfg, SyntheticSource(cfg.data))
    assert (spec.interaction, spec.dcn_num_layers, spec.dcn_low_rank_dim) == ("dot_cross", 3, 512)
    cfg = load_config(overrides=["model.interaction=cross", "model.dense_arch_layer_sizes=[32, 8]",
                                 "model.dcn_low_rank_dim=32"])
    spec = model_spec(cfg, SyntheticSource(cfg.data))
    assert (spec.interaction, spec.dcn_num_layers, spec.dcn_low_rank_dim) == ("cross", 3, 32)
    cfg = load_config(overrides=["model.interaction=dot", "model.dense_arch_layer_sizes=[32, 16]"])
    assert model_spec(cfg, SyntheticSource(cfg.data)).dcn_num_layers is None
    # "none" on the command line parses as null; for this setting it is the encoder alone, not the rule
    cfg = load_config(overrides=["model.interaction=none", "model.dense_arch_layer_sizes=[32, 16]"])
    assert cfg.model.interaction == "none" and model_spec(cfg, SyntheticSource(cfg.data)).interaction == "none"
    assert load_config().model.interaction == "auto"
    with pytest.raises(ValueError, match=r"model.interaction \('fm'\) must be one of"):
        load_config(overrides=["model.interaction=fm"])
    with pytest.raises(ValueError, match=r"model.interaction \('dot'\) is for model.arch='rankmixer', not 'dnn'"):
        load_config(overrides=["model.arch=dnn", "model.interaction=dot"])
    with pytest.raises(ValueError, match=r"model.dcn_num_layers \(2\) sizes DLRM_RankMixer's cross layers"):
        load_config(overrides=["model.arch=dlrm_dcn", "model.dcn_num_layers=2"])
    with pytest.raises(ValueError, match=r"model.dcn_low_rank_dim \(0\) must be"):
        load_config(overrides=["model.dcn_low_rank_dim=0"])
    cfg = load_config(overrides=["model.interaction=none", "model.dcn_num_layers=2"])
    with pytest.raises(ValueError, match=r"model settings: dcn_num_layers \(2\) "
                                         r"and dcn_low_rank_dim \(None\) size the cross layers, which interaction "
                                         r"'none' does not have"):
        model_spec(cfg, SyntheticSource(cfg.data))


def test_managed_collision_settings_load():
    ok = load_config(overrides=["data.id_transform=managed_collision", "data.managed_collision.eviction_interval=2",
                                "run.checkpoint_every=4"])
    assert ok.data.managed_collision.eviction_interval == 2


@pytest.mark.parametrize("overrides,message", [
    (["model.rankmixer={dropout: 1.5}"], "model.rankmixer ({'dropout': 1.5}): dropout (1.5) must be in [0, 1)"),
    (["model.rankmixer={d_model: abc}"], "d_model ('abc') must be a positive int"),
    (["model.rankmixer={num_tokens: 4, d_model: 30}"], "d_model (30) must be divisible by num_heads (4)"),
    (["model.feature_groups={u: [f0], i: [nope]}"], "nope"),
    (["model.sequence_features=[{name: hist, max_len: 4}]"], "model.sequence_features"),
    (["model.interaction=dot", "model.dense_arch_layer_sizes=[8, 4]"],
     "model.interaction: interaction 'dot' needs one width for every vector it dots"),
])
def test_model_settings_errors_name_the_setting(overrides, message):
    """Values inside model.rankmixer and the token plan are checked when the run's model
    spec is built (before any step), with the setting named."""
    from torchrec_rankmixer.data.sources import SyntheticSource
    from torchrec_rankmixer.train.build import model_spec

    cfg = load_config(overrides=overrides)
    with pytest.raises(ValueError) as err:
        model_spec(cfg, SyntheticSource(cfg.data)).build()
    assert message in str(err.value)


def test_deep_branch_setting():
    """model.deep holds DeepConfig fields ({}: no branch); errors name the setting."""
    from torchrec_rankmixer.data.sources import SyntheticSource
    from torchrec_rankmixer.train.build import model_spec

    assert model_spec(load_config(), SyntheticSource(load_config().data)).deep is None
    cfg = load_config(overrides=["model.deep={layer_sizes: [32, 16], dropout: 0.2}"])
    spec = model_spec(cfg, SyntheticSource(cfg.data))
    assert spec.deep.layer_sizes == (32, 16) and spec.deep.dropout == 0.2 and spec.deep.batch_norm
    for overrides, message in (
        (["model.deep={layer_sizes: [8], dropout: 2}"], r"model.deep \(.*\): dropout \(2\) must be in \[0, 1\)"),
        (["model.deep={layers: [8]}"], r"model.deep \(\{'layers': \[8\]\}\) takes layer_sizes \(required\)"),
        (["model.deep={dropout: 0.1}"], r"takes layer_sizes \(required\)"),
        (["model.deep={layer_sizes: [8]}", "model.arch=dnn"], r"model.deep .* is for model.arch='rankmixer', not 'dnn'"),
    ):
        with pytest.raises(ValueError, match=message):
            load_config(overrides=overrides)
