"""The baselines (models/baselines.py): shapes, parity with TorchRec's own models,
errors, and a trained baseline run that exports and scores as trained."""

import os

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM_DCN

from torchrec_rankmixer.models.baselines import BaselineConfig, BaselineModel, CrossNet
from torchrec_rankmixer.models.spec import ModelSpec

TABLES = [EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=20, feature_names=["a", "b"])]


def test_cross_net_matches_its_formula():
    torch.manual_seed(0)
    net, x0 = CrossNet(5, 2), torch.randn(3, 5)
    x = x0
    for lin in net.layers:
        x = x0 * (x @ lin.weight.T + lin.bias) + x
    torch.testing.assert_close(net(x0), x)
    low = CrossNet(5, 1, low_rank=2)
    u, v = low.layers[0][0], low.layers[0][1]
    torch.testing.assert_close(low(x0), x0 * (x0 @ u.weight.T @ v.weight.T + v.bias) + x0)


def _kjt(B: int = 3) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(0)
    return KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.randint(0, 20, (2 * B,), generator=g),
                                               torch.ones(2 * B, dtype=torch.int32))


def test_dlrm_dcn_baseline_is_torchrecs_model():
    """arch 'dlrm_dcn' holds TorchRec's own DLRM_DCN modules: same weights, same logits."""
    torch.manual_seed(1)
    base = BaselineModel("dlrm_dcn", EmbeddingBagCollection(tables=TABLES), 3, [8, 1], [4],
                         BaselineConfig(cross_layers=2, cross_low_rank=2))
    ref = DLRM_DCN(EmbeddingBagCollection(tables=TABLES), 3, [4], [8, 1], 2, 2)
    ref.load_state_dict(base.state_dict())
    dense = torch.rand(3, 3)
    torch.testing.assert_close(base(dense, _kjt()), ref(dense, _kjt()))


@pytest.mark.parametrize("arch", ["dnn", "dcnv2", "dlrm", "dlrm_dcn"])
def test_every_baseline_round_trips_through_its_spec(arch):
    dense_arch = [6, 4] if arch in ("dlrm", "dlrm_dcn") else []
    model = BaselineModel(arch, EmbeddingBagCollection(tables=TABLES), 3, [8, 4, 1], dense_arch)
    dense = torch.rand(3, 3)
    assert model(dense, _kjt()).shape == (3, 1)
    embedded = model.embed(_kjt())  # the split artifact's halves, as DLRM_RankMixer's
    assert embedded.shape == (3, 8)
    torch.testing.assert_close(model.eval().dense_forward(dense, embedded), model(dense, _kjt()))
    spec = ModelSpec.from_model(model)
    assert spec.arch == arch and ModelSpec.from_json(spec.to_json()) == spec
    rebuilt = spec.build()
    assert list(rebuilt.state_dict()) == list(model.state_dict())


def test_dnn_and_dcnv2_follow_their_written_out_definition():
    """dnn = Linear-BN-ReLU-Dropout per hidden size, then one Linear; dcnv2 = that MLP beside
    the cross net, one Linear on [cross, mlp] (eval mode: BN uses its running stats)."""
    torch.manual_seed(2)
    dense, kjt = torch.rand(3, 3), _kjt()
    for arch in ("dnn", "dcnv2"):
        model = BaselineModel(arch, EmbeddingBagCollection(tables=TABLES), 3, [6, 5, 1],
                              config=BaselineConfig(dropout=0.3, cross_layers=2)).eval()
        x0 = torch.cat([dense, model.sparse_arch(kjt).values()], dim=1)
        h = x0
        for lin, bn in ((model.mlp[0], model.mlp[1]), (model.mlp[4], model.mlp[5])):
            h = torch.relu((h @ lin.weight.T + lin.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
                           * bn.weight + bn.bias)
        if arch == "dcnv2":
            h = torch.cat([model.cross(x0), h], dim=1)
        torch.testing.assert_close(model(dense, kjt), h @ model.out.weight.T + model.out.bias)
    lr = BaselineModel("dnn", EmbeddingBagCollection(tables=TABLES), 3, [1])  # no hidden layer: logistic regression
    assert len(lr.mlp) == 0 and lr.out.in_features == 3 + 8


def test_baseline_errors():
    ebc = EmbeddingBagCollection(tables=TABLES)
    with pytest.raises(ValueError, match=r"arch \('mlp'\) must be one of"):
        BaselineModel("mlp", ebc, 3, [1])
    with pytest.raises(ValueError, match=r"dropout \(1.0\) must be in \[0, 1\)"):
        BaselineConfig(dropout=1.0)
    with pytest.raises(ValueError, match=r"dense_arch_layer_sizes \(\[8\]\) must end in the embedding dim \(4\)"):
        BaselineModel("dlrm", ebc, 3, [8, 1], [8])
    with pytest.raises(ValueError, match=r"dense_arch_layer_sizes \(\[4\]\) are for 'dlrm'"):
        BaselineModel("dnn", ebc, 3, [8, 1], [4])
    with pytest.raises(ValueError, match="takes the CTR task and no RankMixer"):
        ModelSpec(tables=ModelSpec.from_model(BaselineModel("dnn", ebc, 3, [1])).tables, dense_in_features=3,
                  dense_arch_layer_sizes=(), over_arch_layer_sizes=(1,), arch="dnn", task="esmm")
    from torchrec_rankmixer.train.config import load_config

    with pytest.raises(ValueError, match="model.baseline names \\['hidden'\\]"):
        load_config(overrides=["model.arch=dnn", "model.baseline={hidden: 3}"])
    with pytest.raises(ValueError, match="model.rankmixer .* is for model.arch='rankmixer'"):
        load_config(overrides=["model.arch=dnn", "model.rankmixer={d_model: 8}"])


@pytest.mark.parametrize("arch", ["dnn", "dlrm_dcn"])
def test_a_baseline_run_trains_exports_and_scores(tmp_path, arch):
    from torchrec_rankmixer.inference import Predictor, export_from_run_dir, load_run_model
    from torchrec_rankmixer.train.config import load_config
    from torchrec_rankmixer.train.loop import Trainer

    from tests.train.helpers import destroy_group, tiny

    overrides = [o for o in tiny(tmp_path, f"run.name={arch}", "run.plots=false", "train.steps=4",
                                 "train.eval_every=0", f"model.arch={arch}", "model.dense_arch_layer_sizes=[16, 8]")
                 if not o.startswith("model.rankmixer.")]
    Trainer(load_config(overrides=overrides)).fit()
    destroy_group()
    run = os.path.join(tmp_path, arch)
    result, _ = export_from_run_dir(run, tmp_path / "art")
    model, _, spec = load_run_model(run)
    assert spec.arch == arch and result.metadata["model_spec"]["arch"] == arch
    from torchrec_rankmixer.data.synthetic import SyntheticClickData

    b = SyntheticClickData(num_sparse_features=4, num_embeddings=50).batch(16, 7)
    kjt = b.sparse_features
    with torch.no_grad():
        want = model(b.dense_features, kjt)
    got = Predictor(result.path).run(b.dense_features, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), -1))
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)  # int8 tables by default
