"""ModelSpec: JSON round trip, reading a spec off a model, and its errors."""

import json

import pytest
import torch
from torchrec import KeyedJaggedTensor

from tests.inference.helpers import dot_spec, small_model, small_spec
from torchrec_rankmixer.models.spec import ModelSpec
from torchrec_rankmixer.models.heads import TaskTowers


def test_json_round_trip_is_plain_json():
    spec = small_spec()
    text = spec.to_json()
    assert json.loads(text)["tables"][0]["feature_names"] == ["f0", "f1"]
    assert ModelSpec.from_json(text) == spec


@pytest.mark.parametrize(
    "overrides",
    [
        {"tokenization": "auto"},
        {"tokenization": "split"},
        {"tokenization": "groups", "feature_groups": {"u": ["f3", "f0"], "i": ["f1"], "c": ["f2"]}},
        {"tokenization": "split", "feature_groups": {"u": ["f3", "f0"], "i": ["f1", "f2"]}},
    ],
)
def test_from_model_rebuilds_the_same_model(overrides):
    model = small_model(**overrides)
    spec = ModelSpec.from_model(model)
    rebuilt = spec.build()
    assert rebuilt.tokenizer.plan == model.tokenizer.plan
    rebuilt.load_state_dict(model.state_dict())  # same parameter shapes, strict
    assert ModelSpec.from_json(spec.to_json()).build().tokenizer.plan == model.tokenizer.plan


def test_from_model_without_dense_input():
    model = small_model(dense_in_features=0)
    spec = ModelSpec.from_model(model)
    assert spec.dense_in_features == 0 and spec.dense_arch_layer_sizes == ()
    assert spec.build().dense_arch is None


def test_derived_fields():
    spec = small_spec()
    assert spec.feature_names == ["f0", "f1", "f2", "f3"]
    assert spec.num_embeddings == [50, 50, 50, 50]
    assert spec.num_logits == 1
    assert spec.rankmixer_config.d_model == 16


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['num_expertz'\]"):
        small_spec(rankmixer_config={"d_model": 16, "num_tokens": 4, "num_layers": 1,
                                     "num_expertz": 2})
    with pytest.raises(ValueError, match=r"d_model \(0\) must be a positive int"):
        small_spec(rankmixer_config={"d_model": 0, "num_tokens": 4, "num_layers": 1})
    with pytest.raises(ValueError, match="tables is empty"):
        small_spec(tables=())


def test_from_dict_errors():
    data = small_spec().to_dict()
    with pytest.raises(ValueError, match=r"spec_version \(3\) must be 1 or 2"):
        ModelSpec.from_dict({**data, "spec_version": 3})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['extra'\]"):
        ModelSpec.from_dict({**data, "extra": 1})
    partial = dict(data)
    del partial["rankmixer_config"]
    with pytest.raises(ValueError, match=r"arch 'rankmixer' needs rankmixer_config"):
        ModelSpec.from_dict(partial)
    del data["over_arch_layer_sizes"]
    with pytest.raises(ValueError, match="task 'ctr' needs over_arch_layer_sizes"):
        ModelSpec.from_dict(data)
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelSpec.from_json("{")


def test_interaction_round_trips_and_a_spec_without_it_means_none():
    spec = dot_spec()
    model = spec.build()
    assert model.interaction == "dot_cross" and ModelSpec.from_model(model) == spec
    assert (spec.dcn_num_layers, spec.dcn_low_rank_dim) == (2, 4) and model.cross_net.num_layers == 2
    assert ModelSpec.from_json(spec.to_json()) == spec
    older = spec.to_dict()
    for key in ("interaction", "dcn_num_layers", "dcn_low_rank_dim", "deep", "dot_norm"):
        del older[key]  # written before the settings existed: the encoder alone
    loaded = ModelSpec.from_dict(older)
    assert loaded.interaction == "none" and loaded.build().interaction_proj is None
    dot_only = dict(older, interaction="dot")  # written when the default was the dot products alone
    assert ModelSpec.from_dict(dot_only).build().cross_net is None
    # cross sizes left out take TorchRec dlrm_main's (3, 512), and read back equal from the model
    default_sizes = dot_spec(dcn_num_layers=None, dcn_low_rank_dim=None)
    assert (default_sizes.dcn_num_layers, default_sizes.dcn_low_rank_dim) == (3, 512)
    assert ModelSpec.from_model(default_sizes.build()) == default_sizes
    esmm = dot_spec(task="esmm", over_arch_layer_sizes=None, tower_layer_sizes=(12,))
    model = esmm.build()  # the towers read the pooled width, which the interaction keeps
    assert model.interaction == "dot_cross" and ModelSpec.from_model(model) == esmm
    kjt = KeyedJaggedTensor.from_lengths_sync(esmm.feature_names, torch.randint(0, 50, (40,)), torch.full((20,), 2))
    assert model.eval()(torch.rand(5, 3), kjt).shape == (5, 2)
    with pytest.raises(ValueError, match=r"interaction \('fm'\) must be one of \['none', 'dot', 'cross', 'dot_cross'\]"):
        dot_spec(interaction="fm")
    with pytest.raises(ValueError, match=r"one width.*'f3': 16"):
        small_spec(interaction="dot").build()  # t_c is 16 wide, the others 8
    assert small_spec(interaction="cross").build().cross_net is not None  # the cross layers take any widths
    with pytest.raises(ValueError, match=r"dcn_num_layers \(2\) and dcn_low_rank_dim \(None\) size the cross "
                                         r"layers, which interaction 'dot' does not have"):
        dot_spec(interaction="dot", dcn_num_layers=2)
    with pytest.raises(ValueError, match=r"takes the CTR task and no RankMixer.*\['interaction'\]"):
        ModelSpec(tables=spec.tables, dense_in_features=3, dense_arch_layer_sizes=(), arch="dnn",
                  over_arch_layer_sizes=(8, 1), interaction="dot")
    deep = dot_spec(deep={"layer_sizes": [8, 4], "dropout": 0.2})  # a mapping, as in spec.json
    assert deep.deep.layer_sizes == (8, 4) and ModelSpec.from_json(deep.to_json()) == deep
    assert ModelSpec.from_model(deep.build()) == deep
    assert ModelSpec.from_dict(older).deep is None  # written before the setting: no branch
    with pytest.raises(ValueError, match=r"takes the CTR task and no RankMixer.*\['deep'\]"):
        ModelSpec(tables=spec.tables, dense_in_features=3, dense_arch_layer_sizes=(), arch="dnn",
                  over_arch_layer_sizes=(8, 1), deep={"layer_sizes": [4]})
    with pytest.raises(ValueError, match=r"takes the CTR task and no RankMixer.*\['dcn_num_layers'\]"):
        ModelSpec(tables=spec.tables, dense_in_features=3, dense_arch_layer_sizes=(), arch="dnn",
                  over_arch_layer_sizes=(8, 1), dcn_num_layers=3)


def test_over_arch_init_round_trips_and_a_spec_without_it_means_the_default():
    plain = small_spec(over_arch_init="torch")
    model = plain.build()
    assert ModelSpec.from_model(model) == plain and ModelSpec.from_json(plain.to_json()) == plain
    biases = [m.bias for m in model.over_arch.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.count_nonzero(b) > 0 for b in biases)  # PyTorch's init kept
    older = plain.to_dict()
    del older["over_arch_init"]  # written before the setting existed
    assert ModelSpec.from_dict(older).over_arch_init == "xavier"
    with pytest.raises(ValueError, match=r"over_arch_init \('he'\) must be one of \['torch', 'xavier'\]"):
        small_spec(over_arch_init="he")
    with pytest.raises(ValueError, match=r"takes the CTR task and no RankMixer.*\['over_arch_init'\]"):
        ModelSpec(tables=plain.tables, dense_in_features=3, dense_arch_layer_sizes=(), arch="dnn",
                  over_arch_layer_sizes=(8, 1), over_arch_init="torch")


def test_dot_norm_round_trips_and_a_spec_without_it_means_the_raw_products():
    normed = dot_spec()
    model = normed.build()
    assert model.dot_products_norm is not None
    assert ModelSpec.from_model(model) == normed and ModelSpec.from_json(normed.to_json()) == normed
    older = normed.to_dict()
    del older["dot_norm"]  # written before the setting existed: the products went in raw
    assert ModelSpec.from_dict(older).dot_norm == "none"
    assert ModelSpec.from_dict(older).build().dot_products_norm is None
    with pytest.raises(ValueError, match=r"dot_norm \('layer'\) must be one of \['none', 'batch'\]"):
        dot_spec(dot_norm="layer")
    with pytest.raises(ValueError, match="dot_norm 'batch' normalises the dot products, which interaction 'none'"):
        dot_spec(interaction="none", dot_norm="batch")
    with pytest.raises(ValueError, match=r"takes the CTR task and no RankMixer.*\['dot_norm'\]"):
        ModelSpec(tables=normed.tables, dense_in_features=3, dense_arch_layer_sizes=(), arch="dnn",
                  over_arch_layer_sizes=(8, 1), dot_norm="batch")


def test_from_model_rejects_other_models():
    with pytest.raises(ValueError, match="is not a DLRM_RankMixer"):
        ModelSpec.from_model(torch.nn.Linear(2, 2))


def test_esmm_spec_round_trips_through_model_and_json():
    spec = small_spec(task="esmm", over_arch_layer_sizes=None, tower_layer_sizes=(12,))
    assert spec.num_logits == 2
    model = spec.build()
    assert type(model.over_arch).__name__ == "TaskTowers" and len(model.over_arch.towers) == 2
    assert ModelSpec.from_model(model) == spec
    assert ModelSpec.from_json(spec.to_json()) == spec
    dense, values, lengths = torch.rand(5, 3), torch.randint(0, 50, (40,)), torch.full((4, 5), 2)
    kjt = KeyedJaggedTensor.from_lengths_sync(spec.feature_names, values, lengths.flatten())
    assert model.eval()(dense, kjt).shape == (5, 2)


def test_version_1_specs_load_and_bad_tasks_raise():
    """0.1 artifacts and model files carry spec_version 1: ffn_kernel, ESMM tower sizes in
    over_arch_layer_sizes, and no task key before ESMM export existed."""
    v2 = small_spec(task="esmm", over_arch_layer_sizes=None, tower_layer_sizes=(12,))
    v1 = v2.to_dict()
    v1.update(spec_version=1, over_arch_layer_sizes=[12, 1], tokenization=None, feature_groups=None)
    del v1["tower_layer_sizes"], v1["sequence_tables"], v1["sequence_features"]
    v1["rankmixer_config"] = {k: v for k, v in v1["rankmixer_config"].items() if k != "kernel"}
    v1["rankmixer_config"]["ffn_kernel"] = "loop"
    loaded = ModelSpec.from_dict(v1)
    assert loaded.rankmixer_config.kernel == "reference"
    assert loaded.tables == v2.tables and loaded.rankmixer_config == v2.rankmixer_config.with_updates(kernel="reference")
    assert (loaded.task, loaded.tower_layer_sizes, loaded.tokenization) == ("esmm", (12,), "auto")
    ctr = small_spec().to_dict()
    ctr.update(spec_version=1)
    del ctr["task"], ctr["tower_layer_sizes"], ctr["sequence_tables"], ctr["sequence_features"]
    assert ModelSpec.from_dict(ctr) == small_spec()
    with pytest.raises(ValueError, match=r"task \('cvr'\) must be one of \['ctr', 'esmm'\]"):
        small_spec(task="cvr")
    with pytest.raises(ValueError, match=r"over_arch_layer_sizes \(\[16, 2\]\) are for task 'ctr'"):
        small_spec(task="esmm", over_arch_layer_sizes=(16, 2))
    with pytest.raises(ValueError, match=r"tower_layer_sizes \(\[8\]\) are ESMM's"):
        small_spec(tower_layer_sizes=(8,))
    model = small_model()
    model.over_arch = TaskTowers(16, [8], num_tasks=3)
    with pytest.raises(ValueError, match="over_arch has 3 task towers"):
        ModelSpec.from_model(model)
