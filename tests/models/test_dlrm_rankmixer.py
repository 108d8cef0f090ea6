import pytest
import torch
import torchrec.fx
from torchrec import EmbeddingBagCollection
from torchrec.models.dlrm import DLRM_DCN, DLRMTrain

from torchrec_rankmixer import DLRM_RankMixer, RankMixerConfig
from torchrec_rankmixer.data.synthetic import SyntheticClickData

DATA = SyntheticClickData(num_sparse_features=5, num_embeddings=50, dense_in_features=4)


def _ebc(device: str = "cpu", dim: int = 8) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=DATA.table_configs(dim), device=torch.device(device))


DCN_KWARGS = dict(
    dense_in_features=4,
    dense_arch_layer_sizes=[16, 8],
    over_arch_layer_sizes=[16, 1],
    dcn_num_layers=2,
    dcn_low_rank_dim=4,
)


def test_one_line_swap_from_dlrm_dcn() -> None:
    """DLRM_DCN's arguments build DLRM_RankMixer; its cross sizes size the default
    interaction's cross layers, the rank capped at a third of their input width (a
    warning says so when it lowers the rank given); "dot_cross" keeps any rank."""
    batch = DATA.batch(6, 0)
    dcn = DLRM_DCN(embedding_bag_collection=_ebc(), **DCN_KWARGS)
    rm = DLRM_RankMixer(embedding_bag_collection=_ebc(), **DCN_KWARGS)
    out_dcn = dcn(batch.dense_features, batch.sparse_features)
    out_rm = rm(batch.dense_features, batch.sparse_features)
    assert out_rm.shape == out_dcn.shape == (6, 1)
    assert rm.interaction == "dot_cross" and rm.recipe()["dcn_num_layers"] == 2
    assert rm.cross_net.V_kernels.shape == (2, 4, 8 + 5 * 8)  # rank 4 on [dense arch output, 5 embeddings]
    big = dict(DCN_KWARGS, dcn_low_rank_dim=512)  # TorchRec dlrm_main's rank, more than W = 48
    with pytest.warns(UserWarning, match=r"dcn_low_rank_dim \(512\) is more than a third .* \(48\); the default "
                                         r"interaction uses rank 16"):
        capped = DLRM_RankMixer(embedding_bag_collection=_ebc(), **big)
    assert capped.recipe()["dcn_low_rank_dim"] == 16 and capped.cross_net.V_kernels.shape == (2, 16, 48)
    crossed = DLRM_RankMixer(embedding_bag_collection=_ebc(), interaction="dot_cross", **big)
    assert crossed.cross_net.V_kernels.shape == (2, 512, 48)
    with pytest.warns(UserWarning, match="interaction 'dot' does not have; they are ignored"):
        DLRM_RankMixer(embedding_bag_collection=_ebc(), interaction="dot", **DCN_KWARGS)


def test_default_config_and_tokens() -> None:
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1])
    # 5 features -> 5 sparse tokens + 1 dense token; D = smallest multiple of 6 >= 64
    assert model.config.num_tokens == 6 and model.config.d_model == 66
    assert model.tokenizer.num_tokens == model.config.num_tokens


def _written_out(model: DLRM_RankMixer, batch, dots: bool, cross: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The model's forward written out: encoder, plus Linear(pairwise dots) and
    Linear(cross layers x_{l+1} = x0 * (U V x_l + b) + x_l on [dense, embeddings]) when asked."""
    dense = model.dense_arch(batch.dense_features)  # (B, d)
    embedded = model.embed(batch.sparse_features)  # (B, F*d)
    pooled = model.encoder(model.tokenizer.tokenize(embedded, dense))  # (B, D)
    if dots:
        v = [dense] + list(embedded.split(8, dim=1))
        products = torch.stack([(v[i] * v[j]).sum(-1) for i in range(len(v)) for j in range(i + 1, len(v))], 1)
        if model.dot_norm == "batch":  # the raw products, then their BatchNorm1d
            bn = model.dot_products_norm.norm
            mean, var = ((products.mean(0), products.var(0, unbiased=False)) if model.training
                         else (bn.running_mean, bn.running_var))
            products = torch.cat([products, (products - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias], 1)
        pooled = pooled + model.interaction_proj(products)
    if cross:
        x0 = torch.cat([dense, embedded], dim=1)  # (B, W)
        x = x0
        net = model.cross_net
        for w, v, b in zip(net.W_kernels, net.V_kernels, net.bias):
            x = x0 * (x @ v.T @ w.T + b) + x
        pooled = pooled + model.cross_proj(x)
    return model.over_arch(pooled)


def test_default_interaction_adds_projected_dot_products_and_cross_layers_on_request() -> None:
    """The swap's default (one width everywhere, as DLRM_DCN requires) dots the dense arch
    output and the 5 features (15 pairs) and runs 3 cross layers on their concatenation (48
    wide; rank 512 capped at 48 // 3 = 16); "dot_cross" keeps rank 512; each is projected
    to the pooled width and added to the pooled tokens, forward and backward as written out."""
    default = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1])
    assert default.interaction == "dot_cross" and default.cross_net.W_kernels.shape == (3, 48, 16)
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction="dot_cross")
    assert model.dot_norm == "batch" and model.interaction_proj.in_features == 2 * 15  # raw and normalised
    assert model.interaction_proj.out_features == model.cross_proj.out_features == model.config.output_dim
    assert model.cross_net.W_kernels.shape == (3, 48, 512)
    batch = DATA.batch(6, 0)
    out = model(batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(out, _written_out(model, batch, dots=True, cross=True))
    out.sum().backward()
    assert model.interaction_proj.weight.grad.abs().sum() > 0
    assert model.cross_net.V_kernels.grad[2].abs().sum() > 0
    for interaction, dots, cross in (("dot", True, False), ("cross", False, True)):
        sizes = {"dcn_low_rank_dim": 6} if cross else {}
        part = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction=interaction, **sizes)
        assert (part.dot_interaction is not None, part.cross_net is not None) == (dots, cross)
        torch.testing.assert_close(part(batch.dense_features, batch.sparse_features),
                                   _written_out(part, batch, dots=dots, cross=cross))


def test_dot_norm_batch_by_default_none_keeps_the_raw_products_and_eval_uses_running_stats() -> None:
    batch = DATA.batch(6, 0)
    torch.manual_seed(0)
    raw = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], dot_norm="none")
    assert raw.dot_products_norm is None and raw.interaction_proj.in_features == 15
    torch.testing.assert_close(raw(batch.dense_features, batch.sparse_features),
                               _written_out(raw, batch, dots=True, cross=True))
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1])
    assert model.dot_norm == "batch" and model.recipe()["dot_norm"] == "batch"
    for _ in range(3):  # training batches move the running statistics off (0, 1)
        model(batch.dense_features, batch.sparse_features)
    assert model.dot_products_norm.norm.running_mean.abs().sum() > 0
    model.eval()
    torch.testing.assert_close(model(batch.dense_features, batch.sparse_features),
                               _written_out(model, batch, dots=True, cross=True))
    assert DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction="cross", dcn_low_rank_dim=4).dot_norm == "none"
    with pytest.raises(ValueError, match="dot_norm 'batch' normalises the dot products, which interaction 'none'"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction="none", dot_norm="batch")
    with pytest.raises(ValueError, match=r"dot_norm \('layer'\) must be one of"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], dot_norm="layer")


def test_interaction_none_is_the_encoder_alone_and_unequal_widths_fall_back() -> None:
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction="none")
    assert model.dot_interaction is None and model.interaction_proj is None and model.cross_net is None
    batch = DATA.batch(6, 0)
    torch.testing.assert_close(model(batch.dense_features, batch.sparse_features),
                               _written_out(model, batch, dots=False, cross=False))
    # a dense arch output of another width than the tables: nothing to dot by default; the
    # cross layers take any widths
    assert DLRM_RankMixer(_ebc(), 4, [16, 4], [16, 1]).interaction == "none"
    mixed = DLRM_RankMixer(_ebc(), 4, [16, 4], [16, 1], interaction="cross")
    assert mixed.cross_net.bias.shape == (3, 4 + 5 * 8)
    with pytest.raises(ValueError, match=r"one width.*'dense arch output': 4"):
        DLRM_RankMixer(_ebc(), 4, [16, 4], [16, 1], interaction="dot")
    with pytest.raises(ValueError, match=r"interaction \('fm'\) must be one of"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], interaction="fm")


def test_groups_multi_logit_and_custom_config() -> None:
    cfg = RankMixerConfig(d_model=18, num_tokens=3, num_layers=1)
    model = DLRM_RankMixer(
        _ebc(), 4, [16, 8], [16, 2],
        rankmixer_config=cfg,
        feature_groups={"a": ["f0", "f1"], "b": ["f2", "f3", "f4"]},
    )
    b = DATA.batch(4, 1)
    assert model(b.dense_features, b.sparse_features).shape == (4, 2)


def test_no_dense_features() -> None:
    model = DLRM_RankMixer(_ebc(), 0, [], [16, 1])
    b = DATA.batch(4, 1)
    assert model(torch.empty(4, 0), b.sparse_features).shape == (4, 1)
    assert model.dense_arch is None and model.config.num_tokens == 5


def test_meta_ebc_builds() -> None:
    model = DLRM_RankMixer(_ebc("meta"), 4, [16, 8], [16, 1])
    assert model.sparse_arch.embedding_bag_collection.embedding_bags["t_f0"].weight.is_meta
    assert not any(p.is_meta for p in model.dense_parameters())


def test_dlrm_train_wrapper_trains() -> None:
    torch.manual_seed(0)
    train = DLRMTrain(DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1]))
    opt = torch.optim.Adam(train.parameters(), lr=3e-3)
    losses = []
    for i in range(40):
        loss, (_, logits, labels) = train(DATA.batch(128, i % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert logits.shape == labels.shape == (128,)
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rankmixer_config=RankMixerConfig(d_model=16, num_tokens=4, num_layers=1), feature_groups={"a": ["f0", "f1"], "b": ["f2", "f3", "f4"]}),
         r"num_tokens \(3\) must equal the number of groups \(2\)"),
        (dict(rankmixer_config=RankMixerConfig(d_model=16, num_tokens=1, num_layers=1)), r"must exceed the number of dense tokens \(1\)"),
        (dict(feature_groups={"a": ["f0", "nope"]}), r"unknown feature 'nope'"),
    ],
)
def test_construction_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], **kwargs)


def test_construction_errors_for_arch_sizes() -> None:
    with pytest.raises(ValueError, match=r"over_arch_layer_sizes \(\[1\]\)"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [1])
    with pytest.raises(ValueError, match=r"dense_in_features \(-2\)"):
        DLRM_RankMixer(_ebc(), -2, [16, 8], [16, 1])


def test_torchrec_fx_symbolic_trace_round_trip() -> None:
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1])
    model.eval()
    gm = torchrec.fx.symbolic_trace(model)
    b = DATA.batch(5, 2)
    torch.testing.assert_close(gm(b.dense_features, b.sparse_features), model(b.dense_features, b.sparse_features))
    # the input check is kept as one opaque call in the graph
    assert any("check_model_inputs" in str(n.target) for n in gm.graph.nodes)
    with pytest.raises(ValueError, match="unknown sparse feature keys"):
        bad = DATA.batch(5, 2).sparse_features
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        renamed = KeyedJaggedTensor(keys=["zz"] + bad.keys()[1:], values=bad.values(), lengths=bad.lengths())
        gm(b.dense_features, renamed)


def _tokens(model: DLRM_RankMixer, dense: torch.Tensor, kjt) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """X0 [B, T, D]: the tokens entering the encoder."""
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model(dense, kjt)
    finally:
        hook.remove()
    return seen[0]


def _with_ids(kjt, feature: str, shift: int):  # type: ignore[no-untyped-def]
    """The same KJT with ``feature``'s ids moved to other table rows."""
    from torchrec import KeyedJaggedTensor

    parts = kjt.to_dict()
    values = [(parts[k].values() + (shift if k == feature else 0)) % 50 for k in kjt.keys()]
    return KeyedJaggedTensor.from_lengths_sync(kjt.keys(), torch.cat(values), kjt.lengths())


@pytest.mark.parametrize("groups,owner", [
    ({"a": ["f0", "f1"], "b": ["f2", "f3", "f4"]}, {"f0": 0, "f1": 0, "f2": 1, "f3": 1, "f4": 1}),
    ({"a": ["f3"], "b": ["f0", "f4"], "c": ["f1", "f2"]}, {"f3": 0, "f0": 1, "f4": 1, "f1": 2, "f2": 2}),
    (None, {f"f{i}": i for i in range(5)}),  # the default plan: one token per feature here
])
def test_each_feature_group_reaches_its_own_token(groups, owner) -> None:
    """The swap routes features as promised: changing one feature's ids changes exactly its
    group's token, and the dense input changes exactly the dense token (the last)."""
    torch.manual_seed(0)
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], feature_groups=groups).eval()
    b = DATA.batch(8, 3)
    base = _tokens(model, b.dense_features, b.sparse_features)
    T = base.shape[1]
    for feature, token in owner.items():
        moved = _tokens(model, b.dense_features, _with_ids(b.sparse_features, feature, 7))
        changed = [t for t in range(T) if not torch.equal(moved[:, t], base[:, t])]
        assert changed == [token], (feature, changed)
    dense_moved = _tokens(model, b.dense_features + 1.0, b.sparse_features)
    assert [t for t in range(T) if not torch.equal(dense_moved[:, t], base[:, t])] == [T - 1]


def test_deep_branch_adds_its_logits_to_the_over_arch() -> None:
    """deep=DeepConfig(...): an MLP on [dense arch output, embeddings] whose logits are
    added to the over-arch's (CTR: 1, ESMM's towers: 2); it needs to know the logit count."""
    from torchrec_rankmixer.models.heads import TaskTowers
    from torchrec_rankmixer.modules.deep import DeepConfig

    deep = DeepConfig(layer_sizes=(12, 6), dropout=0.1)
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], deep=deep).eval()
    assert model.deep_branch.mlp[0].in_features == 8 + 5 * 8 and model.recipe()["deep"] == deep
    batch = DATA.batch(6, 0)
    with torch.no_grad():
        x0 = torch.cat([model.dense_arch(batch.dense_features), model.embed(batch.sparse_features)], dim=1)
        expected = _written_out(model, batch, dots=True, cross=True) + model.deep_branch(x0)
        torch.testing.assert_close(model(batch.dense_features, batch.sparse_features), expected)
    model.train()(batch.dense_features, batch.sparse_features).sum().backward()
    assert model.deep_branch.out.weight.grad.abs().sum() > 0
    cfg = model.config
    esmm = DLRM_RankMixer(_ebc(), 4, [16, 8], None, deep=deep, over_arch=TaskTowers(cfg.output_dim, [8], 2))
    assert esmm.deep_branch.out.out_features == 2
    assert esmm(batch.dense_features, batch.sparse_features).shape == (6, 2)
    with pytest.raises(ValueError, match="deep needs to know the number of logits.*custom Linear"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], None, deep=deep, over_arch=torch.nn.Linear(cfg.output_dim, 1))
    with pytest.raises(ValueError, match="deep must be a DeepConfig or None; got dict"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], deep={"layer_sizes": [4]})  # type: ignore[arg-type]


def test_over_arch_init_xavier_zeroes_the_head_biases_and_torch_keeps_pytorch_s() -> None:
    """over_arch_init="xavier" (the default): xavier-normal OverArch weights, zero biases
    there and in the interaction projections; "torch" leaves PyTorch's nn.Linear init
    (nonzero biases); a given over_arch module is not re-initialised."""
    from torchrec_rankmixer.models.heads import TaskTowers

    torch.manual_seed(0)
    model = DLRM_RankMixer(_ebc(), 4, [16, 8], [64, 64, 1], interaction="dot_cross", dcn_num_layers=1,
                           dcn_low_rank_dim=4)
    linears = [m for m in model.over_arch.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and model.recipe()["over_arch_init"] == "xavier"
    for layer in linears + [model.interaction_proj, model.cross_proj]:
        assert torch.count_nonzero(layer.bias) == 0
    hidden = linears[1].weight  # xavier-normal: std sqrt(2 / (64 + 64)) = 0.125; PyTorch's is uniform, std 0.072
    assert 0.11 < hidden.std().item() < 0.14
    plain = DLRM_RankMixer(_ebc(), 4, [16, 8], [64, 64, 1], over_arch_init="torch")
    plain_linears = [m for m in plain.over_arch.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.count_nonzero(m.bias) > 0 for m in plain_linears + [plain.interaction_proj])
    assert plain_linears[1].weight.std().item() < 0.09 and plain.recipe()["over_arch_init"] == "torch"
    towers = TaskTowers(model.config.output_dim, [8], 2)
    before = [p.clone() for p in towers.parameters()]
    DLRM_RankMixer(_ebc(), 4, [16, 8], None, over_arch=towers)
    assert all(torch.equal(a, b) for a, b in zip(before, towers.parameters()))
    with pytest.raises(ValueError, match=r"over_arch_init \('kaiming'\) must be one of \['torch', 'xavier'\]"):
        DLRM_RankMixer(_ebc(), 4, [16, 8], [16, 1], over_arch_init="kaiming")
