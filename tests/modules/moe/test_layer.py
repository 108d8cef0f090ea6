"""PerTokenSparseMoE (modules/moe.py) and its RankMixerConfig settings."""

import pytest
import torch

from torchrec_rankmixer import PerTokenSparseMoE, RankMixerConfig, RankMixerEncoder
from torchrec_rankmixer.modules.ffn_factory import build_ffn
from torchrec_rankmixer.modules.moe import configure_moe_inference, reset_statistics
from torchrec_rankmixer.ops.moe import moe_experts_reference
from torchrec_rankmixer.utils.flops import count_flops

T, D, E, H = 3, 8, 4, 16


def _moe(router: str = "dtsi", **kw: object) -> PerTokenSparseMoE:
    torch.manual_seed(0)
    return PerTokenSparseMoE(T, D, num_experts=E, expert_hidden=H, router=router, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("router", ["dtsi", "relu", "topk"])
def test_eval_sparse_equals_reference_with_h_infer_gates(router: str) -> None:
    moe = _moe(router).eval()
    x = torch.randn(10, T, D)
    logits = moe.router_infer(x)
    if router == "topk":
        gates = torch.zeros_like(logits).scatter(-1, logits.topk(moe.top_k, -1).indices, 1.0)
        gates = gates * torch.softmax(logits, -1)
        gates = gates / gates.sum(-1, keepdim=True)
    else:
        gates = torch.relu(logits)
    expected = moe_experts_reference(x, gates, moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2)
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)
    moe.configure_inference(execution="dense")
    torch.testing.assert_close(moe(x), expected, rtol=1e-5, atol=1e-5)


def test_inference_uses_only_h_infer() -> None:
    moe = _moe().eval()
    x = torch.randn(10, T, D)
    y = moe(x)
    with torch.no_grad():
        moe.router_train.weight.add_(1.0)
    torch.testing.assert_close(moe(x), y)  # h_train is not on the inference path
    with torch.no_grad():
        moe.router_infer.weight.add_(0.5)
    assert not torch.allclose(moe(x), y)


def test_dtsi_training_gives_task_gradient_to_both_routers() -> None:
    """The known bug: h_infer only sees the L1 gradient. Here the task reaches both."""
    moe = _moe().train()  # the L1 coefficient starts at 0: this backward is all task
    x = torch.randn(64, T, D)
    moe(x).square().mean().backward()
    assert moe.router_infer.weight.grad.abs().sum() > 0
    assert moe.router_train.weight.grad.abs().sum() > 0
    assert moe.experts.w1.grad.abs().amin(dim=(2, 3)).gt(0).all()  # every expert trained (dense)


def test_train_path_mixes_routers_with_dense_path_prob() -> None:
    moe = _moe(dense_path_prob=0.0).train()
    x = torch.randn(32, T, D)
    g = torch.relu(moe.router_infer(x)).detach()  # before the forward moves the ratio offset
    torch.manual_seed(1)
    y = moe(x)
    torch.testing.assert_close(y, moe_experts_reference(x, g, moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert moe.router_train.weight.grad is None  # p = 0: h_train unused


def _both_paths(moe: PerTokenSparseMoE, x: torch.Tensor):
    """(h_train-gated, h_infer-gated) reference outputs, [B, T, D] each."""
    ws = (moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2)
    g_train = torch.nn.functional.softplus(moe.router_train(x))
    return (moe_experts_reference(x, g_train, *ws).detach(),
            moe_experts_reference(x, torch.relu(moe.router_infer(x)), *ws).detach())


@pytest.mark.parametrize("path_draw", ["sample", "token"])
def test_path_draw_routes_whole_samples_or_single_tokens(path_draw: str) -> None:
    moe = _moe(path_draw=path_draw, offset_rate=0.0).train()
    x = torch.randn(200, T, D)
    y_train, y_infer = _both_paths(moe, x)
    y = moe(x).detach()
    by_train = torch.isclose(y, y_train, atol=1e-5).all(-1)  # (B, T)
    by_infer = torch.isclose(y, y_infer, atol=1e-5).all(-1)
    assert (by_train | by_infer).all()  # every (sample, token) took one of the two paths
    mixed = by_train.any(1) & by_infer.any(1) & ~(by_train.all(1) | by_infer.all(1))
    if path_draw == "sample":
        assert not mixed.any()
        assert 60 < int(by_train.all(1).sum()) < 140  # p = 1/2 of 200 samples
    else:
        assert mixed.any()


def test_encoder_shares_one_path_draw_across_moe_layers() -> None:
    """Each training sample runs exactly one of the two models that are evaluated."""
    cfg = RankMixerConfig(d_model=D, num_tokens=4, num_layers=3, use_moe=True, moe_num_experts=E,
                          moe_expert_hidden=H, moe_offset_rate=0.0, moe_target_active_ratio=0.5)
    torch.manual_seed(0)
    enc = RankMixerEncoder(cfg)
    x = torch.randn(100, 4, D)
    enc.eval()
    with torch.no_grad():
        y_infer = enc(x)
        configure_moe_inference(enc, execution="dense", router="train")
        y_train = enc(x)
    seen = []
    moes = [m for m in enc.modules() if isinstance(m, PerTokenSparseMoE)]
    for m in moes:
        m.register_forward_pre_hook(lambda mod, _: seen.append(mod._path_mask))
    enc.train()
    y = enc(x).detach()
    assert len(seen) == 3 and all(s is seen[0] for s in seen)  # one [B] draw for all layers
    assert all(m._path_mask is None for m in moes)  # cleared after the forward
    pick = seen[0]
    torch.testing.assert_close(y[pick], y_train[pick], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[~pick], y_infer[~pick], rtol=1e-4, atol=1e-5)
    assert 0 < int(pick.sum()) < 100


def test_set_path_mask_errors() -> None:
    moe = _moe().train()
    with pytest.raises(ValueError, match="bool"):
        moe.set_path_mask(torch.ones(4))
    moe.set_path_mask(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="4 rows, the batch has 5"):
        moe(torch.randn(5, T, D))


def test_topk_trains_with_k_experts_and_load_balance() -> None:
    moe = _moe("topk", target_active_ratio=0.5).train()
    moe(torch.randn(16, T, D)).sum().backward()
    stats = moe.statistics()
    assert stats["active_ratio"] == pytest.approx(0.5)
    assert stats["balance_loss"] >= 1.0 - 1e-6
    assert "l1_coef" not in stats


def test_statistics_and_dead_experts() -> None:
    moe = _moe("relu").eval()
    with torch.no_grad():
        moe.router_infer.bias[0, 1] = -1e4  # expert (0, 1) can never fire
        moe.router_infer.bias[2] = 1e4  # token 2: every expert always fires
    reset_statistics(moe)
    moe(torch.randn(20, T, D))
    moe(torch.randn(12, T, D))
    stats = moe.statistics()
    util = moe.expert_utilisation()
    assert util.shape == (T, E) and util[0, 1] == 0 and (util[2] == 1).all()
    assert stats["dead_experts"] >= 1 and stats["expert_util_max"] == 1.0
    assert stats["active_ratio_t2"] == 1.0
    assert stats["active_ratio"] == pytest.approx(sum(stats[f"active_ratio_t{t}"] for t in range(T)) / T)
    assert {"l1_coef", "l1_integral", "gate_l1", "expert_util_min"} <= set(stats)
    moe.reset_statistics()
    assert moe.statistics() == {}


def test_config_builds_moe_and_counts_params_and_flops() -> None:
    cfg = RankMixerConfig(d_model=8, num_tokens=2, num_layers=2, use_moe=True, moe_num_experts=4,
                          moe_expert_hidden=16, moe_target_active_ratio=0.5)
    assert isinstance(build_ffn(cfg), PerTokenSparseMoE)
    enc = RankMixerEncoder(cfg)
    assert sum(p.numel() for p in enc.parameters()) == cfg.param_count(exact=True)
    assert cfg.param_count() == 2 * 4 * 16 * 2 * 2 * 8  # 2 E h L T D
    assert cfg.param_count(active=True) == cfg.param_count() // 2
    assert cfg.flops_per_sample() == 4 * 2 * 16 * 2 * 2 * 8  # 4 (target E) h L T D
    assert cfg.flops_per_sample(training=True) == 2 * cfg.flops_per_sample()
    # Dense-training FLOPs are exactly what the module's dense path costs.
    enc.train()
    assert count_flops(enc, torch.randn(1, 2, 8)) == cfg.flops_per_sample(exact=True, training=True)
    # Default expert width matches the dense FFN's active FLOPs: kD / (E * target).
    base = RankMixerConfig(d_model=16, num_tokens=2, num_layers=1, use_moe=True, moe_num_experts=8)
    assert base.moe_hidden == 4 * 16 // 2
    assert base.flops_per_sample() == base.with_updates(use_moe=False).flops_per_sample()


def test_dtsi_counts_two_routers_in_training_params() -> None:
    kw = dict(d_model=8, num_tokens=2, num_layers=1, use_moe=True, moe_num_experts=4, moe_expert_hidden=8)
    dtsi, relu = RankMixerConfig(**kw), RankMixerConfig(moe_router="relu", **kw)  # type: ignore[arg-type]
    assert dtsi.param_count(exact=True) - relu.param_count(exact=True) == 2 * (8 * 4 + 4)
    assert dtsi.param_count(exact=True, active=True) == relu.param_count(exact=True, active=True)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("use_moe", 1, "use_moe"),
        ("moe_router", "softmax", "moe_router"),
        ("moe_num_experts", 0, "moe_num_experts"),
        ("moe_expert_hidden", -3, "moe_expert_hidden"),
        ("moe_target_active_ratio", 0.0, "moe_target_active_ratio"),
        ("moe_target_active_ratio", 1.5, "moe_target_active_ratio"),
        ("moe_target_active_ratio", "half", "moe_target_active_ratio"),
        ("moe_l1_kp", -1.0, "moe_l1_kp"),
        ("moe_l1_ki", 0.0, "moe_l1_ki"),
        ("moe_balance_coef", -0.1, "moe_balance_coef"),
        ("moe_dense_path_prob", 1.0, "moe_dense_path_prob"),
        ("moe_l1_ki", float("nan"), "moe_l1_ki"),
        ("moe_offset_rate", -0.01, "moe_offset_rate"),
        ("moe_offset_rate", "fast", "moe_offset_rate"),
        ("moe_offset_per", "layer", "moe_offset_per"),
        ("moe_train_gate", "sigmoid", "moe_train_gate"),
        ("moe_path_draw", "layer", "moe_path_draw"),
    ],
)
def test_bad_moe_config_raises(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RankMixerConfig(d_model=8, num_tokens=2, num_layers=1, **{"use_moe": True, field: value})  # type: ignore[arg-type]


def test_bad_moe_combinations_raise() -> None:
    with pytest.raises(ValueError, match="ffn_type"):
        RankMixerConfig(d_model=8, num_tokens=2, num_layers=1, use_moe=True, ffn_type="shared")
    with pytest.raises(ValueError, match="rounds to 0"):
        RankMixerConfig(d_model=8, num_tokens=2, num_layers=1, use_moe=True, moe_router="topk",
                        moe_num_experts=4, moe_target_active_ratio=0.1)
    with pytest.raises(ValueError, match="rounds to 0"):
        PerTokenSparseMoE(2, 8, num_experts=4, router="topk", target_active_ratio=0.1)
    with pytest.raises(ValueError, match="num_experts"):
        PerTokenSparseMoE(2, 8, num_experts=0)
    with pytest.raises(ValueError, match="dense_path_prob"):
        PerTokenSparseMoE(2, 8, dense_path_prob=-0.1)
    with pytest.raises(ValueError, match="offset_rate"):
        PerTokenSparseMoE(2, 8, offset_rate=-1.0)
    with pytest.raises(ValueError, match="offset_per"):
        PerTokenSparseMoE(2, 8, offset_per="batch")
    with pytest.raises(ValueError, match="train_gate"):
        PerTokenSparseMoE(2, 8, train_gate="gelu")
    with pytest.raises(ValueError, match="path_draw"):
        PerTokenSparseMoE(2, 8, path_draw="batch")


def test_configure_inference_errors_and_model_helper() -> None:
    moe = _moe("relu")
    with pytest.raises(ValueError, match="execution"):
        moe.configure_inference(execution="fast")
    with pytest.raises(ValueError, match="sparse_kernel"):
        moe.configure_inference(sparse_kernel="triton")
    with pytest.raises(ValueError, match="'dtsi'"):
        moe.configure_inference(router="train")
    assert configure_moe_inference(torch.nn.Sequential(_moe(), torch.nn.ReLU()), execution="dense") == 1


def test_meta_device_and_state_dict_keeps_controller_state() -> None:
    meta = PerTokenSparseMoE(T, D, num_experts=E, expert_hidden=H, device="meta")
    assert meta.experts.w1.is_meta
    moe = _moe()
    moe.l1.coef.fill_(0.123)
    moe.l1.integral.fill_(0.1)
    fresh = _moe()
    fresh.load_state_dict(moe.state_dict())
    assert fresh.l1.coef.item() == pytest.approx(0.123)
    assert fresh.l1.integral.item() == pytest.approx(0.1)


def test_ratio_offset_moves_in_training_only_and_is_checkpointed() -> None:
    moe = _moe(offset_rate=0.1, target_active_ratio=0.25).train()
    x = torch.randn(32, T, D)
    active = (moe.router_infer(x) > 0).float().mean(0)  # (T, E) before the step
    moe(x).sum().backward()
    torch.testing.assert_close(moe.router_infer.offset, 0.1 * torch.sign(0.25 - active))
    assert "ratio_offset_mean" in moe.statistics()
    moe.eval()
    saved = moe.router_infer.offset.clone()
    y = moe(x)  # eval: no update, and the offset is part of h_infer's logits
    assert torch.equal(moe.router_infer.offset, saved)
    gates = torch.relu(moe.router_infer(x))
    torch.testing.assert_close(y, moe_experts_reference(x, gates, moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2), rtol=1e-5, atol=1e-5)
    fresh = _moe(offset_rate=0.1)
    fresh.load_state_dict(moe.state_dict())
    assert torch.equal(fresh.router_infer.offset, saved)
    assert _moe(offset_rate=0.0).router_infer.offset is None  # offset_rate 0: no buffer
    assert _moe("topk", offset_rate=0.1, target_active_ratio=0.5).router_infer.offset is None


def test_softplus_train_gate_makes_the_dense_gated_path_dense() -> None:
    moe = _moe(train_gate="softplus", dense_path_prob=0.5).eval()
    with torch.no_grad():
        moe.router_train.bias.fill_(-20.0)  # ReLU would switch every h_train gate off
    x = torch.randn(10, T, D)
    moe.configure_inference(execution="dense", router="train")
    gates = torch.nn.functional.softplus(moe.router_train(x))
    assert (gates > 0).all()
    torch.testing.assert_close(moe(x), moe_experts_reference(x, gates, moe.experts.w1, moe.experts.b1, moe.experts.w2, moe.experts.b2), rtol=1e-5, atol=1e-5)
    moe.train()
    moe(x)
    assert moe.statistics()["train_router_active_ratio"] == 1.0


def test_state_dict_from_before_the_experts_submodule_loads() -> None:
    """0.1 saved the experts as ``w1 .. b2`` of the layer; they load into ``experts.*``."""
    old = PerTokenSparseMoE(num_tokens=2, d_model=4, num_experts=2, expert_hidden=3)
    legacy = {k.replace("experts.", ""): v for k, v in old.state_dict().items()}
    assert "w1" in legacy and "experts.w1" not in legacy
    fresh = PerTokenSparseMoE(num_tokens=2, d_model=4, num_experts=2, expert_hidden=3)
    fresh.load_state_dict(legacy)
    for name, value in old.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
