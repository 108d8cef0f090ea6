"""torchrec_rankmixer.features.sequence_arch: the EC wrapper, KJT truncation, and the
sequence path of DLRM_RankMixer (single process; sharding is test_sequence_distributed)."""

from typing import List, Optional, Sequence

import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig as Seq
from torchrec_rankmixer.features.sequence_arch import SequenceArch, build_sequence_arch, truncate_kjt
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer

B = 3


def _ec(features: Sequence[str] = ("cand", "hist"), dim: int = 4) -> EmbeddingCollection:
    torch.manual_seed(0)
    return EmbeddingCollection(
        tables=[EmbeddingConfig(name="t_item", embedding_dim=dim, num_embeddings=20, feature_names=list(features))]
    )


def _ebc() -> EmbeddingBagCollection:
    torch.manual_seed(1)
    return EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name="t_u", embedding_dim=6, num_embeddings=10, feature_names=["user"])]
    )


def _kjt(hist: List[List[int]], cand: Optional[List[int]] = None, user: Optional[List[int]] = None) -> KeyedJaggedTensor:
    keys, values, lengths = [], [], []
    if user is not None:
        keys.append("user")
        values += user
        lengths += [1] * len(user)
    cand = cand if cand is not None else [1, 2, 3][: len(hist)]
    keys += ["cand", "hist"]
    values += cand + [i for h in hist for i in h]
    lengths += [1] * len(cand) + [len(h) for h in hist]
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.tensor(values), lengths=torch.tensor(lengths)
    )


HIST = [[4, 5, 6, 7, 8], [], [9, 10]]


def test_arch_matches_manual_lookup_truncation_and_pooling() -> None:
    ec = _ec()
    arch = SequenceArch(ec, [Seq("cand", 1), Seq("hist", 3, keep="recent", pooling="max")])
    out = arch(_kjt(HIST))
    table = ec.embeddings["t_item"].weight
    expected_hist = torch.stack([table[[6, 7, 8]].max(0).values, torch.zeros(4), table[[9, 10]].max(0).values])
    assert out.keys() == ["cand", "hist"] and out.length_per_key() == [4, 4]
    torch.testing.assert_close(out.to_dict()["cand"], table[[1, 2, 3]])
    torch.testing.assert_close(out.to_dict()["hist"], expected_hist)


def test_arch_merges_after_pooled_features_and_uses_ebc_candidate() -> None:
    ebc = _ebc()
    arch = SequenceArch(_ec(["hist"]), [Seq("hist", 4, pooling="target", candidate="user")], {"user": 6})
    assert arch.poolings["hist"].query_proj is not None  # 6-wide query projected to 4
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["user", "hist"], values=torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        lengths=torch.tensor([1, 1, 1, 5, 0, 2]),
    )
    pooled = ebc(kjt)
    out = arch(kjt, pooled)
    assert out.keys() == ["user", "hist"] and out.values().shape == (B, 10)
    torch.testing.assert_close(out.values()[:, :6], pooled.values())
    assert torch.equal(out.values()[1, 6:], torch.zeros(4))  # empty history
    with pytest.raises(ValueError, match="needs the pooled EBC output"):
        arch(kjt)


def test_keep_oldest_vs_recent() -> None:
    kjt = _kjt(HIST)
    recent = SequenceArch(_ec(), [Seq("cand", 1), Seq("hist", 2, keep="recent")])(kjt)
    oldest = SequenceArch(_ec(), [Seq("cand", 1), Seq("hist", 2, keep="oldest")])(kjt)
    table = _ec().embeddings["t_item"].weight
    torch.testing.assert_close(recent.to_dict()["hist"][0], table[[7, 8]].mean(0))
    torch.testing.assert_close(oldest.to_dict()["hist"][0], table[[4, 5]].mean(0))


@pytest.mark.parametrize(
    "features, configs, pooled, message",
    [
        (["cand", "hist"], [Seq("hist", 2)], {}, r"\['cand'\] have no SequenceFeatureConfig"),
        (["hist"], [Seq("hist", 2), Seq("other", 2)], {}, r"\['other'\] are not in the EmbeddingCollection"),
        (["hist"], [Seq("hist", 2), Seq("hist", 3)], {}, r"\['hist'\] are configured more than once"),
        (["hist"], [Seq("hist", 2)], {"hist": 4}, "embedded by both"),
        (["hist"], [Seq("hist", 2, pooling="target", candidate="nope")], {}, "'nope' .* is neither"),
        (
            ["a", "hist"],
            [Seq("a", 2, pooling="target", candidate="hist"), Seq("hist", 2, pooling="target", candidate="a")],
            {}, "itself target-pooled",
        ),
    ],
)
def test_arch_config_errors(features: List[str], configs: List[Seq], pooled: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SequenceArch(_ec(features), configs, pooled)


def test_arch_rejects_a_feature_in_two_tables_and_half_configs() -> None:
    ec = EmbeddingCollection(tables=[
        EmbeddingConfig(name=t, embedding_dim=4, num_embeddings=5, feature_names=["h"]) for t in ("a", "b")
    ])
    with pytest.raises(ValueError, match="in two EmbeddingCollection tables"):
        SequenceArch(ec, [Seq("h", 2)])
    with pytest.raises(ValueError, match="needs sequence_embedding_collection"):
        build_sequence_arch(None, [Seq("h", 2)], {})
    with pytest.raises(ValueError, match="needs sequence_features"):
        build_sequence_arch(_ec(), None, {})


def test_truncate_kjt_before_lookup_gives_the_same_model_output() -> None:
    configs = [Seq("cand", 1), Seq("hist", 3, pooling="target", candidate="cand")]
    kjt = _kjt(HIST, user=[1, 2, 3])
    cut = truncate_kjt(kjt, configs)
    assert cut.keys() == kjt.keys()
    assert cut.to_dict()["hist"].lengths().tolist() == [3, 0, 2]
    assert cut.to_dict()["hist"].values().tolist() == [6, 7, 8, 9, 10]
    assert torch.equal(cut.to_dict()["user"].values(), kjt.to_dict()["user"].values())
    arch = SequenceArch(_ec(), configs)
    torch.testing.assert_close(arch(cut).values(), arch(kjt).values())
    weighted = KeyedJaggedTensor.from_lengths_sync(
        keys=["hist"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([3]),
        weights=torch.tensor([0.1, 0.2, 0.3]),
    )
    assert truncate_kjt(weighted, [Seq("hist", 2)]).weights().tolist() == pytest.approx([0.2, 0.3])


# ---------------------------------------------------------------- DLRM_RankMixer integration
def _model(groups: Optional[dict] = None, pooling: str = "target", **kwargs: object) -> DLRM_RankMixer:
    torch.manual_seed(0)
    tokens = (len(groups) if groups else 3) + 1  # + 1 dense token
    return DLRM_RankMixer(
        embedding_bag_collection=_ebc(),
        dense_in_features=2, dense_arch_layer_sizes=[4], over_arch_layer_sizes=[8, 1],
        rankmixer_config=RankMixerConfig(d_model=12, num_tokens=tokens, num_layers=1),
        feature_groups=groups or {"user": ["user"], "cand": ["cand"], "hist": ["hist"]},
        sequence_embedding_collection=_ec(dim=4),
        sequence_features=[Seq("cand", 1), Seq("hist", 3, pooling=pooling,
                                                candidate="cand" if pooling == "target" else None)],
        **kwargs,  # type: ignore[arg-type]
    )


def test_model_gives_a_sequence_its_own_token_projected_to_d() -> None:
    model = _model()
    plan = model.tokenizer.plan
    assert plan.names == ("user", "cand", "hist") and plan.widths == (6, 4, 4)  # 4 -> D=12 per token
    kjt = _kjt(HIST, user=[1, 2, 3])
    logits = model(torch.randn(B, 2), kjt)
    assert logits.shape == (B, 1) and torch.isfinite(logits).all()
    logits.sum().backward()
    item_table = model.sequence_arch.embedding_collection.embeddings["t_item"].weight
    assert item_table.grad.abs().sum(1).nonzero().flatten().tolist() == [1, 2, 3, 6, 7, 8, 9, 10]  # not 4, 5
    dense_ids = {id(p) for p in model.dense_parameters()}
    assert id(item_table) not in dense_ids
    assert id(model.sequence_arch.poolings["hist"].mlp[0].weight) in dense_ids


def test_model_sequence_in_a_group_and_older_items_beyond_max_len_do_not_matter() -> None:
    model = _model(groups={"user": ["user"], "behaviour": ["cand", "hist"]}, pooling="mean")
    model.eval()
    dense = torch.randn(B, 2)
    base = model(dense, _kjt(HIST, user=[1, 2, 3]))
    older = [[0, 11] + h if len(h) >= 3 else h for h in HIST]  # prepend old items to full rows
    torch.testing.assert_close(model(dense, _kjt(older, user=[1, 2, 3])), base)
    changed = [[0] + h if len(h) < 3 else h for h in HIST]  # short rows: an extra item counts
    assert not torch.allclose(model(dense, _kjt(changed, user=[1, 2, 3])), base)


def test_model_validates_sequence_keys_and_ids() -> None:
    model = _model()
    with pytest.raises(ValueError, match="'hist' has id 25 outside its table's range"):
        model(torch.randn(B, 2), _kjt([[1], [25], []], user=[1, 2, 3]))
    with pytest.raises(ValueError, match=r"missing sparse feature keys \['user'\]"):
        model(torch.randn(B, 2), _kjt(HIST))
    with pytest.raises(ValueError, match="embedded by both"):
        DLRM_RankMixer(
            embedding_bag_collection=_ebc(), dense_in_features=0, dense_arch_layer_sizes=[4],
            over_arch_layer_sizes=[8, 1], sequence_embedding_collection=_ec(["user"]),
            sequence_features=[Seq("user", 2)],
        )


def test_model_default_config_counts_sequence_features() -> None:
    model = DLRM_RankMixer(
        embedding_bag_collection=_ebc(), dense_in_features=0, dense_arch_layer_sizes=[4],
        over_arch_layer_sizes=[8, 1], sequence_embedding_collection=_ec(),
        sequence_features=[Seq("cand", 1), Seq("hist", 5, pooling="target", candidate="cand")],
    )
    assert model.config.num_tokens == 3  # user, cand, hist: one auto token each
    assert model(torch.empty(B, 0), _kjt(HIST, user=[1, 2, 3])).shape == (B, 1)


def test_model_traces_with_torchrec_fx_and_matches_eager() -> None:
    """TrainPipelineSparseDist FX-traces the model to find the sharded modules."""
    from torchrec.fx import symbolic_trace

    for pooling in ("mean", "max", "target"):
        model = _model(pooling=pooling)
        traced = symbolic_trace(model)
        dense, kjt = torch.randn(B, 2), _kjt(HIST, user=[1, 2, 3])
        torch.testing.assert_close(traced(dense, kjt), model(dense, kjt))
    assert isinstance(SequenceArch(_ec(), [Seq("cand", 1), Seq("hist", 2)])(_kjt(HIST)), KeyedTensor)
