"""The scriptable twin of the tokenizer's _ordered_values behaves the same."""

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_rankmixer.features.tokenizer import _ordered_values
from torchrec_rankmixer.inference.scripting import ordered_values_scriptable


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "a", "b"]])
def test_same_as_tokenizer_helper(order):
    kt = KeyedTensor(keys=["a", "b", "c"], length_per_key=[1, 2, 3], values=torch.randn(4, 6))
    assert torch.equal(ordered_values_scriptable(kt, order), _ordered_values(kt, order))


def test_missing_key():
    kt = KeyedTensor(keys=["a"], length_per_key=[1], values=torch.randn(2, 1))
    with pytest.raises(ValueError, match="lacks feature b"):
        ordered_values_scriptable(kt, ["a", "b"])


@pytest.mark.parametrize("order", [["a", "b", "c"], ["c", "a", "b"]])
def test_scripted_twin_gives_the_same_columns(order):
    """The TorchScript-compiled function (what the .ts artifact runs) reorders columns as
    the eager tokenizer helper does, and raises on a missing key."""
    scripted = torch.jit.script(ordered_values_scriptable)
    kt = KeyedTensor(keys=["a", "b", "c"], length_per_key=[1, 2, 3], values=torch.randn(4, 6))
    assert torch.equal(scripted(kt, order), _ordered_values(kt, order))
    with pytest.raises(Exception, match="lacks feature d"):
        scripted(kt, ["a", "d"])


@pytest.mark.parametrize("changes,options", [
    ({"tml_global_token": True}, {}),
    ({"tml_global_token": True}, {"dynamic_int8_linear": True}),
    ({"use_moe": True, "moe_num_experts": 4}, {}),
])
def test_tokenmixer_large_inference_module_scripts(changes, options):
    from tests.inference.helpers import artifact_inputs, small_model, small_spec
    from torchrec_rankmixer.inference.quantize import QuantizationOptions, build_inference_model
    from torchrec_rankmixer.inference.scripting import script_inference_module

    rc = small_spec().rankmixer_config.with_updates(block="tokenmixer_large", **changes)
    module = build_inference_model(small_model(seed=5, rankmixer_config=rc), QuantizationOptions(**options))
    scripted = script_inference_module(module)
    for i, batch in enumerate((1, 8)):
        args = artifact_inputs(batch, i)
        with torch.inference_mode():
            assert torch.equal(scripted(*args), module(*args))
