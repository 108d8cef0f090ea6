"""The deep branch (modules/deep.py): mlp_block, DeepConfig, DeepBranch."""

import pytest
import torch

from torchrec_rankmixer.modules.deep import DeepBranch, DeepConfig, mlp_block


def test_mlp_block_layers() -> None:
    kinds = [type(m).__name__ for m in mlp_block(4, [3, 2], 0.2, True)]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    assert [type(m).__name__ for m in mlp_block(4, [3], 0.0, False)] == ["Linear", "ReLU"]


def test_branch_matches_its_layers_written_out_in_eval_and_trains() -> None:
    """Eval mode: Linear -> BatchNorm (running stats) -> ReLU per hidden layer, then the
    logits Linear; dropout is off. Weights start xavier-normal, biases zero."""
    torch.manual_seed(0)
    branch = DeepBranch(6, 2, DeepConfig(layer_sizes=(5, 3), dropout=0.5))
    assert all(torch.count_nonzero(m.bias) == 0 for m in branch.modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(8, 6)
    branch.train()(x).sum().backward()  # one training pass moves the BatchNorm running stats
    assert branch.mlp[0].weight.grad.abs().sum() > 0
    branch.eval()
    h = x
    for lin, bn in ((branch.mlp[0], branch.mlp[1]), (branch.mlp[4], branch.mlp[5])):
        h = torch.relu((h @ lin.weight.T + lin.bias - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
                       * bn.weight + bn.bias)
    torch.testing.assert_close(branch(x), h @ branch.out.weight.T + branch.out.bias)
    assert branch(x).shape == (8, 2)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"layer_sizes \(\[\]\) needs at least 1 size"):
        DeepConfig(layer_sizes=[])
    with pytest.raises(ValueError, match=r"dropout \(1.0\) must be in \[0, 1\)"):
        DeepConfig(layer_sizes=[4], dropout=1.0)
    with pytest.raises(ValueError, match=r"batch_norm \('yes'\) must be"):
        DeepConfig(layer_sizes=[4], batch_norm="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_logits \(0\) must be a positive int"):
        DeepBranch(4, 0, DeepConfig(layer_sizes=[4]))
