"""benchmarks/bench_overarch.py: the rows it builds (no timing)."""

import argparse

import torch

from benchmarks import bench_overarch
from torchrec_rankmixer.models.defaults import BLOCK_DEFAULTS, DEFAULT_BLOCK


def _args(**kw) -> argparse.Namespace:
    base = dict(features=7, emb_dim=8, d_model=16, layers=2, dcn_layers=2, dcn_low_rank=8, dcn_over=[256, 128],
                tokens=[4], default_block=False, compile=False)
    return argparse.Namespace(**{**base, **kw})


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_block_rows_match_dcnv2_parameters_and_train() -> None:
    models = bench_overarch.build(_args(default_block=True))
    rows = [n for n in models if n.startswith(DEFAULT_BLOCK)]
    assert [n.split()[1] for n in rows] == ["T=8", "T=4"], rows  # one token per feature (F + 1), then --tokens
    target = _params(models["dcnv2"])
    for name in rows:  # the D chosen is the multiple of T closest to DCNv2's parameters
        t, d = (int(part.split("=")[1]) for part in name.split()[1:])
        cfg = models[name].encoder.config
        assert (cfg.block, cfg.ffn_mult, cfg.num_tokens, cfg.d_model) == (
            DEFAULT_BLOCK, BLOCK_DEFAULTS[DEFAULT_BLOCK]["ffn_mult"], t, d)
        gap = abs(_params(models[name]) - target)
        for other in [o for o in (d - t, d + t) if t <= o < 4 * _args().d_model]:  # the search range
            alt = bench_overarch.RankMixerOver(7, 8, type(cfg)(d_model=other, num_tokens=t, num_layers=2,
                                                               block=DEFAULT_BLOCK, ffn_mult=cfg.ffn_mult), [other, 1])
            assert gap <= abs(_params(alt) - target)
    dense, emb = torch.randn(3, 8), torch.randn(3, 7, 8, requires_grad=True)
    bench_overarch.train_step_fn(models[rows[0]], dense, emb, torch.tensor([0.0, 1.0, 0.0]))()
    assert all(p.grad is not None for p in models[rows[0]].parameters())


def test_without_the_flag_only_the_rankmixer_block_rows() -> None:
    models = bench_overarch.build(_args())
    assert list(models)[:2] == ["rankmixer", "dcnv2"] and len(models) == 3
    assert list(models)[2].startswith("rankmixer T=4 D=")
