"""torch.export and TorchScript round trips of the dense core."""

import pytest
import torch

from torchrec_rankmixer import RankMixerConfig, RankMixerEncoder


@pytest.mark.parametrize("changes", [{}, {"ln_style": "pre", "final_norm": True}, {"pooling": "flatten"}])
def test_torch_export_encoder(changes: dict) -> None:
    torch.manual_seed(0)
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=2, kernel="batched").with_updates(**changes)).eval()
    x = torch.randn(3, 4, 16)
    ep = torch.export.export(enc, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    for batch in (1, 3, 9):
        xb = torch.randn(batch, 4, 16)
        torch.testing.assert_close(ep.module()(xb), enc(xb))


def test_export_save_load(tmp_path) -> None:
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=1)).eval()
    x = torch.randn(2, 4, 16)
    path = tmp_path / "enc.pt2"
    torch.export.save(torch.export.export(enc, (x,)), str(path))
    loaded = torch.export.load(str(path)).module()
    torch.testing.assert_close(loaded(x), enc(x))


def test_torchscript_trace_encoder() -> None:
    enc = RankMixerEncoder(RankMixerConfig(d_model=16, num_tokens=4, num_layers=1, kernel="batched")).eval()
    x = torch.randn(2, 4, 16)
    traced = torch.jit.trace(enc, (x,))
    torch.testing.assert_close(traced(torch.randn(5, 4, 16) * 0 + x[:1]), enc(x[:1]).expand(5, -1))
