"""build_inference_model: table dtypes, dense dtypes, sizes, and option errors."""

import pytest
import torch
from torchrec import KeyedJaggedTensor

from tests.inference.helpers import artifact_inputs, small_model
from torchrec_rankmixer.inference.quantize import (
    QuantizationOptions,
    build_inference_model,
    module_bytes,
    table_bytes,
)


def _float_logits(model, dense, values, lengths):
    kjt = KeyedJaggedTensor(keys=model.feature_names, values=values, lengths=lengths.reshape(-1))
    with torch.no_grad():
        return model(dense, kjt)


@pytest.mark.parametrize(
    "table_dtype,dense_dtype,int8_dense,tol",
    [("fp32", "fp32", False, 1e-6), ("int8", "fp32", False, 0.02), ("int4", "fp32", False, 0.2),
     ("fp16", "fp32", False, 0.005), ("int8", "fp16", False, 0.05), ("int8", "fp32", True, 0.05),
     ("fp32", "fp32", True, 0.05)],
)
def test_close_to_float_model(table_dtype, dense_dtype, int8_dense, tol):
    model = small_model(seed=2)
    infer = build_inference_model(model, QuantizationOptions(table_dtype, dense_dtype, int8_dense))
    inputs = artifact_inputs(32, 0)
    out = infer(*inputs)
    assert out.dtype == torch.float32 and out.shape == (32, 1)
    diff = (out - _float_logits(model, *inputs)).abs().max().item()
    assert diff < tol
    if table_dtype != "fp32" or int8_dense:
        assert diff > 0  # the tables or the dense part really changed precision


def test_quantized_tables_use_torchrec_quant_ebc_and_shrink():
    model = small_model()
    sizes = {}
    for dtype in ("fp32", "fp16", "int8", "int4"):
        infer = build_inference_model(model, QuantizationOptions(table_dtype=dtype))
        ebc = infer.model.sparse_arch.embedding_bag_collection
        expected = "torchrec.quant" if dtype != "fp32" else "torchrec.modules"
        assert type(ebc).__module__.startswith(expected)
        sizes[dtype] = table_bytes(infer)
    # tables: t_a (shared by f0, f1) and t_b are 50 x 8, t_c is 50 x 16
    assert sizes["fp32"] == table_bytes(model) == 4 * (2 * 50 * 8 + 50 * 16)
    # int8 rows: dim bytes + 4 bytes of fp16 scale/bias, row alignment 1; fbgemm pads
    # each table's block to a multiple of 64 bytes
    def pad64(n):
        return -(-n // 64) * 64

    assert sizes["int8"] == 2 * pad64(50 * (8 + 4)) + pad64(50 * (16 + 4))
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_input_model_untouched_and_eval():
    model = small_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    infer = build_inference_model(model, QuantizationOptions(dense_dtype="fp16"))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in infer.modules())
    assert infer.model.validate_inputs is False
    dense_params = [p for n, p in infer.named_parameters() if "sparse_arch" not in n]
    assert dense_params and all(p.dtype == torch.float16 for p in dense_params)


def test_dynamic_int8_linear_is_the_quantized_default():
    from tests.inference.helpers import dot_spec

    torch.manual_seed(3)
    model = dot_spec().build().eval()  # the default swap's parts: dot products, cross layers
    infer = build_inference_model(model)  # int8 tables: the dense part goes int8 too
    names = {type(m).__name__ for m in infer.modules()}
    assert {"Int8DynamicLinear", "Int8DynamicCrossNet"} <= names
    assert not names & {"Linear", "LowRankCrossNet", "PerTokenFFN"}  # every matmul layer swapped
    inputs = artifact_inputs(16, 1)
    assert 0 < (infer(*inputs) - _float_logits(model, *inputs)).abs().max() < 0.1
    kept = build_inference_model(model, QuantizationOptions(dynamic_int8_linear=False))
    assert "Int8DynamicLinear" not in {type(m).__name__ for m in kept.modules()}
    inputs = artifact_inputs(16, 1)
    assert (infer(*inputs) - _float_logits(model, *inputs)).abs().max() < 0.1
    assert module_bytes(infer) < module_bytes(model)


def test_option_errors():
    with pytest.raises(ValueError, match=r"table_dtype \('int2'\)"):
        QuantizationOptions(table_dtype="int2")
    with pytest.raises(ValueError, match=r"dense_dtype \('fp8'\)"):
        QuantizationOptions(dense_dtype="fp8")
    with pytest.raises(ValueError, match="dynamic_int8_linear needs dense_dtype='fp32'"):
        QuantizationOptions(dense_dtype="fp16", dynamic_int8_linear=True)
    with pytest.raises(ValueError, match=r"row_alignment \(0\)"):
        QuantizationOptions(row_alignment=0)
    with pytest.raises(ValueError, match=r"dynamic_int8_linear \(1\)"):
        QuantizationOptions(dynamic_int8_linear=1)


def test_model_errors():
    with pytest.raises(ValueError, match="plain \\(unsharded\\) EmbeddingBagCollection"):
        build_inference_model(torch.nn.Linear(2, 2))
    from tests.inference.helpers import small_spec

    meta = small_spec().build(device=torch.device("meta"))
    with pytest.raises(ValueError, match="meta device"):
        build_inference_model(meta)


@pytest.mark.parametrize("changes", [
    {},
    {"tml_global_token": True, "use_moe": True, "moe_router": "topk", "moe_num_experts": 4,
     "moe_target_active_ratio": 0.5},
])
def test_tokenmixer_large_dynamic_int8(changes):
    from tests.inference.helpers import small_spec

    rc = small_spec().rankmixer_config.with_updates(block="tokenmixer_large", **changes)
    model = small_model(seed=3, rankmixer_config=rc)
    infer = build_inference_model(model, QuantizationOptions(dynamic_int8_linear=True))
    names = [type(m).__name__ for m in infer.modules()]
    assert "PerTokenSwiGLU" not in names  # every pSwiGLU (shared experts too) unfused
    unfused = [m for m in infer.modules() if type(m).__name__ == "PerTokenLinearSwiGLU"]
    assert len(unfused) == 2 * 2  # two FFNs per block, two blocks
    quantized = {type(l).__name__ for m in unfused for l in m.fc_in}
    assert quantized == {"Int8DynamicLinear"}
    inputs = artifact_inputs(16, 1)
    diff = (infer(*inputs) - _float_logits(model, *inputs)).abs().max()
    assert 0 < diff < 0.1
    assert module_bytes(infer) < module_bytes(model)
