"""Plain checkpoints: save -> load gives the same model; bad files give clear errors."""

import torch
import pytest

from tests.inference.helpers import artifact_inputs, small_model
from torchrec_rankmixer.inference.model_file import (
    full_state_dict,
    load_model,
    read_model_file,
    save_model,
)
from torchrec_rankmixer.models.spec import ModelSpec


def test_round_trip(tmp_path):
    model = small_model(seed=1)
    path = tmp_path / "ckpt.pt"
    save_model(model, path)
    data = read_model_file(path)
    assert data["spec"] == ModelSpec.from_model(model).to_dict()
    restored = load_model(path)
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
        read_model_file(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="is not a torchrec_rankmixer.checkpoint file"):
        read_model_file(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read model file"):
        read_model_file(garbage)
    path = tmp_path / "v2.pt"
    save_model(small_model(), path)
    data = torch.load(path, weights_only=True)
    data["format_version"] = 2
    torch.save(data, path)
    with pytest.raises(ValueError, match=r"format_version \(2\) must be 1"):
        read_model_file(path)
