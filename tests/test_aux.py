import torch
from torch import nn

from torchrec_rankmixer.modules.aux import collect_auxiliary_loss, collect_statistics


class _WithAux(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def auxiliary_loss(self) -> torch.Tensor:
        return torch.tensor(self.value)

    def statistics(self) -> dict:
        return {"ratio": self.value / 10}


def test_collects_from_submodules() -> None:
    model = nn.Sequential(nn.Linear(2, 2), _WithAux(1.5), nn.Sequential(_WithAux(2.0)))
    assert collect_auxiliary_loss(model).item() == 3.5
    assert collect_statistics(model) == {"1.ratio": 0.15, "2.0.ratio": 0.2}
    assert collect_auxiliary_loss(nn.Linear(1, 1)).item() == 0.0
