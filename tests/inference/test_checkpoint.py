"""Plain checkpoints: save -> load gives the same model; bad files give clear errors."""

import torch
import pytest

from tests.inference.helpers import artifact_inputs, small_model
from torchrec_rankmixer.inference.checkpoint import (
    full_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from torchrec_rankmixer.inference.spec import ModelSpec


def test_round_trip(tmp_path):
    model = small_model(seed=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, path)
    data = read_checkpoint(path)
    assert data["spec"] == ModelSpec.from_model(model).to_dict()
    restored = load_checkpoint(path)
    assert not restored.training
    dense, values, lengths = artifact_inputs(6, 0)
    from torchrec import KeyedJaggedTensor

    kjt = KeyedJaggedTensor(keys=model.feature_names, values=values, lengths=lengths.reshape(-1))
    assert torch.equal(model(dense, kjt), restored(dense, kjt))


def test_full_state_dict_is_cpu_and_complete():
    model = small_model()
    sd = full_state_dict(model)
    assert sd.keys() == model.state_dict().keys()
    assert all(v.device.type == "cpu" for v in sd.values())


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="is not a torchrec_rankmixer.checkpoint file"):
        read_checkpoint(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        read_checkpoint(garbage)
    path = tmp_path / "v2.pt"
    save_checkpoint(small_model(), path)
    data = torch.load(path, weights_only=True)
    data["format_version"] = 2
    torch.save(data, path)
    with pytest.raises(ValueError, match=r"format_version \(2\) must be 1"):
        read_checkpoint(path)
