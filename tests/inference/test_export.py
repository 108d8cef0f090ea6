"""Export: .pt2 and TorchScript artifacts load in a fresh process without
torchrec_rankmixer and give exactly the in-memory quantized model's predictions."""

import copy
import json
import os
import pickle
import shutil
import zipfile

import pytest
import torch

from tests.inference.helpers import Planted, artifact_inputs, dot_spec, run_fresh, small_model, small_spec
from torchrec_rankmixer.inference.artifact import load_artifact, resolve_model_file
from torchrec_rankmixer.inference.model_file import save_model
from torchrec_rankmixer.inference.export import export_model, moe_execution
from torchrec_rankmixer.inference.predictor import Predictor
from torchrec_rankmixer.inference.quantize import QuantizationOptions
from torchrec_rankmixer.utils.files import sha256_file
from torchrec_rankmixer.modules.moe import configure_moe_inference

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The default split artifact (int8 tables and dense int8, from a checkpoint), a .pt2
    (the same options) and a .ts (int4 tables, fp16 dense), of a model with the dot
    interaction (the default swap's)."""
    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(6)
    model = dot_spec().build().eval()
    ckpt = root / "ckpt.pt"
    save_model(model, ckpt)
    split = export_model(ckpt, root / "split", dense_feature_names=["a", "b", "c"])
    pt2 = export_model(model, root / "pt2", artifact="export")
    ts = export_model(model, root / "ts", QuantizationOptions(table_dtype="int4", dense_dtype="fp16"),
                      artifact="torchscript")
    return split, pt2, ts


def test_fresh_process_matches_in_memory(tmp_path, exported):
    split, pt2, ts = exported
    assert split.path.endswith("model_sparse.ts") and pt2.path.endswith(".pt2") and ts.path.endswith(".ts")
    inputs = [artifact_inputs(b, i) for i, b in enumerate((1, 7, 64))]  # dynamic batch
    outs, reports = run_fresh([split.path, pt2.path, ts.path], inputs, tmp_path)
    for result, out, report in zip(exported, outs, reports):
        assert report["features"] == ["f0", "f1", "f2", "f3"]
        assert report["leaked"] == []
        assert report["torchrec_imported"] is False  # torch + fbgemm_gpu suffice
        loaded = load_artifact(result.path).module
        with torch.inference_mode():
            for args, o in zip(inputs, out):
                assert o.shape == (args[0].shape[0], 1)
                assert torch.equal(o, loaded(*args))
                if result is split:  # AOTInductor's fused kernels round differently (an int8
                    # activation code may land one step away: a few 1e-4 on a logit)
                    torch.testing.assert_close(o, result.module(*args), rtol=1e-3, atol=1e-3)
                else:
                    assert torch.equal(o, result.module(*args))


def test_checkpoint_source_and_metadata(exported):
    result = exported[0]
    export_dir = os.path.dirname(result.path)
    with open(os.path.join(export_dir, "metadata.json")) as f:
        meta = json.load(f)
    assert meta == result.metadata == load_artifact(export_dir).metadata
    assert meta["artifact"] == "aoti" and meta["fallback_reason"] is None
    assert sorted(os.listdir(export_dir)) == [".lock", "metadata.json", "model_dense.aoti.pt2", "model_sparse.ts"]
    assert meta["parts"]["dense"] == "model_dense.aoti.pt2" and len(meta["parts"]["dense_sha256"]) == 64
    assert exported[1].metadata["artifact"] == "torch.export" and "parts" not in exported[1].metadata
    assert meta["moe_execution"] is None  # no Sparse-MoE in this model
    assert meta["dense_feature_names"] == ["a", "b", "c"]
    assert meta["num_embeddings"] == [50, 50, 50, 50]
    assert meta["quantization"]["table_dtype"] == "int8" and meta["quantization"]["dynamic_int8_linear"] is True
    assert meta["model_spec"]["tables"][0]["feature_names"] == ["f0", "f1"]
    assert set(meta["versions"]) == {"torchrec_rankmixer", "torch", "torchrec", "fbgemm_gpu"}
    assert meta["sizes_bytes"]["tables"] < meta["sizes_bytes"]["tables_float"]
    args = artifact_inputs(5, 3)
    torch.testing.assert_close(load_artifact(result.path).module(*args), result.module(*args),
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("artifact", ["export", "torchscript"])
def test_int8_dense_exports_to_every_artifact(tmp_path, artifact):
    """Dense int8 (plain aten ops) traces through torch.export and TorchRec's FX tracer +
    TorchScript too (the split artifact: the ``exported`` fixture); reloaded, it equals the
    in-memory module, and it stays close to the float one."""
    (tmp_path / "model.pt2").write_bytes(b"")  # an earlier export's file is removed
    model = small_model()
    result = export_model(model, tmp_path, QuantizationOptions(dynamic_int8_linear=True), artifact=artifact)
    assert result.metadata["artifact"] == {"export": "torch.export", "torchscript": "torchscript"}[artifact]
    assert result.metadata["fallback_reason"] is None
    assert any(type(m).__name__ == "Int8DynamicLinear" for m in result.module.modules())
    args = artifact_inputs(4, 0)
    out = load_artifact(tmp_path).module(*args)
    assert torch.equal(out, result.module(*args))
    float_out = export_model(model, tmp_path / "float", QuantizationOptions(dynamic_int8_linear=False),
                             artifact="export").module(*args)
    assert 0 < (out - float_out).abs().max() < 0.05


def test_export_errors(tmp_path):
    model = small_model()
    with pytest.raises(ValueError, match=r"artifact \('onnx'\)"):
        export_model(model, tmp_path, artifact="onnx")
    with pytest.raises(ValueError, match="must be 3 distinct names"):
        export_model(model, tmp_path, dense_feature_names=["a", "a", "b"])
    with pytest.raises(ValueError, match=r"\['f0'\] are also sparse feature names"):
        export_model(model, tmp_path, dense_feature_names=["f0", "b", "c"])
    with pytest.raises(ValueError, match="must be an nn.Module or a checkpoint path"):
        export_model(3, tmp_path)
    with pytest.raises(ValueError, match="holds none of model_sparse.ts, model.pt2, model.ts"):
        resolve_model_file(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="must end in .pt2"):
        load_artifact(tmp_path / "model.onnx")


def test_drop_table_views_keeps_outputs():
    from torchrec_rankmixer.inference.export import drop_table_views
    from torchrec_rankmixer.inference.quantize import build_inference_model, table_bytes

    module = build_inference_model(small_model(seed=9))
    args = artifact_inputs(6, 1)
    before, tables = module(*args), table_bytes(module)
    assert drop_table_views(module) == 3  # one weight view per table
    assert not any(".embedding_bags." in k for k in module.state_dict())
    assert torch.equal(module(*args), before) and table_bytes(module) == tables


def _moe_model():
    """A small DLRM_RankMixer whose FFNs are Sparse-MoEs (E=4, DTSI routers, fresh init:
    roughly half the experts of each token active, so the sparse path has work to skip)."""
    rc = small_spec().rankmixer_config.with_updates(use_moe=True, moe_num_experts=4, moe_expert_hidden=8)
    return small_model(seed=2, rankmixer_config=rc)


def test_moe_exports_sparse_inference(tmp_path):
    model = _moe_model()
    inputs = [artifact_inputs(b, 10 + i) for i, b in enumerate((1, 9, 64))]
    pt2 = export_model(model, tmp_path / "pt2", artifact="export")  # sparse MoE
    ts = export_model(model, tmp_path / "ts", artifact="torchscript")  # sparse kernel scripted
    assert pt2.path.endswith(".pt2") and pt2.metadata["fallback_reason"] is None
    assert pt2.metadata["moe_execution"] == "sparse"
    assert ts.metadata["moe_execution"] == "sparse"
    # both graphs hold the sparse kernel: active triples found by nonzero, scatter-added
    targets = {str(n.target) for n in torch.export.load(pt2.path).graph.nodes}
    assert "aten.nonzero.default" in targets and "aten.index_add.default" in targets
    ts_code = torch.jit.load(ts.path).code
    assert "moe_experts_sparse_resolved" in ts_code
    with torch.inference_mode():
        sparse_out = [pt2.module(*args) for args in inputs]
    ratios = [s["active_ratio"] for s in [m.statistics() for m in pt2.module.modules()
                                          if hasattr(m, "expert_utilisation")]]
    assert len(ratios) == 2 and all(0.1 < r < 0.9 for r in ratios)  # experts partly active
    outs, reports = run_fresh([pt2.path, ts.path], inputs, tmp_path)
    assert [r["moe_execution"] for r in reports] == ["sparse", "sparse"]
    assert all(r["leaked"] == [] for r in reports)
    dense = copy.deepcopy(pt2.module)
    configure_moe_inference(dense, execution="dense")
    with torch.inference_mode():
        for args, ref, o_pt2, o_ts in zip(inputs, sparse_out, outs[0], outs[1]):
            assert torch.equal(o_pt2, ref)  # the artifacts = the in-memory sparse model
            assert torch.equal(o_ts, ref)
            torch.testing.assert_close(ref, dense(*args), rtol=1e-5, atol=1e-5)  # same gates


def test_moe_execution_names_each_setting():
    model = _moe_model()
    assert moe_execution(model) == "sparse"
    configure_moe_inference(model, execution="dense")
    assert moe_execution(model) == "dense"
    configure_moe_inference(model, router="train")  # DTSI: h_train gates, every expert
    assert moe_execution(model) == "dense_h_train"
    moes = [m for m in model.modules() if hasattr(m, "expert_utilisation")]
    moes[0].configure_inference(execution="sparse")
    assert moe_execution(model) == "sparse+dense_h_train"
    assert moe_execution(small_model()) is None


def _tml_model(**changes):
    """A small DLRM_RankMixer with TokenMixer-Large blocks."""
    rc = small_spec().rankmixer_config.with_updates(block="tokenmixer_large", **changes)
    return small_model(seed=4, rankmixer_config=rc)


def test_tokenmixer_large_exports_with_float_parity(tmp_path):
    """A dense TokenMixer-Large model with the global token (.pt2) and a top-k Sparse-MoE one
    (.pt2 and .ts, sparse kernel): fresh-process outputs equal the float models' logits."""
    from torchrec import KeyedJaggedTensor

    dense_model = _tml_model(tml_global_token=True, num_layers=3)
    moe_model = _tml_model(use_moe=True, moe_router="topk", moe_num_experts=4, moe_target_active_ratio=0.5)
    fp32 = QuantizationOptions(table_dtype="fp32")
    results = [export_model(dense_model, tmp_path / "dense", fp32, artifact="export"),
               export_model(moe_model, tmp_path / "moe", fp32, artifact="export"),
               export_model(moe_model, tmp_path / "moe_ts", fp32, artifact="torchscript")]
    assert [r.path[-3:] for r in results] == ["pt2", "pt2", ".ts"]
    assert results[0].metadata["fallback_reason"] is None and results[1].metadata["moe_execution"] == "sparse"
    assert results[0].metadata["model_spec"]["rankmixer_config"]["block"] == "tokenmixer_large"
    inputs = [artifact_inputs(b, 20 + i) for i, b in enumerate((1, 9, 64))]
    outs, reports = run_fresh([r.path for r in results], inputs, tmp_path)
    assert all(r["leaked"] == [] for r in reports)
    for model, result, out in zip((dense_model, moe_model, moe_model), results, outs):
        for (dense, values, lengths), o in zip(inputs, out):
            kjt = KeyedJaggedTensor(keys=model.feature_names, values=values, lengths=lengths.reshape(-1))
            with torch.inference_mode():
                assert torch.equal(o, result.module(dense, values, lengths))
                torch.testing.assert_close(o, model(dense, kjt), rtol=1e-5, atol=1e-5)


def test_split_artifact_refuses_a_foreign_missing_or_unrunnable_dense_part(exported, tmp_path, monkeypatch):
    split = exported[0]
    src = os.path.dirname(split.path)
    for name in ("model_sparse.ts", "model_dense.aoti.pt2"):  # either file names the pair
        assert load_artifact(os.path.join(src, name)).path == split.path
    work = tmp_path / "split"
    shutil.copytree(src, work)
    sparse, dense = str(work / "model_sparse.ts"), str(work / "model_dense.aoti.pt2")

    def rewrite(**parts: str) -> None:  # metadata naming the dense file as it now is
        parts = {"dense_sha256": sha256_file(dense), **parts}
        meta = dict(split.metadata, parts=dict(split.metadata["parts"], **parts))
        torch.jit.save(torch.jit.load(sparse), sparse, _extra_files={"metadata.json": json.dumps(meta)})

    with zipfile.ZipFile(dense, "a") as z:  # another package under the same name
        z.writestr("extra.txt", "x")
    with pytest.raises(ValueError, match="is not the dense part exported with it"):
        Predictor(work)
    marker = tmp_path / "ran"
    with zipfile.ZipFile(dense, "a") as z:  # pickled weights: torch could be asked to unpickle them
        prefix = z.namelist()[0].split("/")[0]
        z.writestr(f"{prefix}/data/aotinductor/model/w_weights_config.json",
                   json.dumps({"config": {"w": {"path_name": "w.pkl", "use_pickle": True}}}))
        z.writestr(f"{prefix}/data/aotinductor/model/w.pkl", pickle.dumps(Planted(str(marker))))
    rewrite()  # an attacker can write a matching hash too
    with pytest.raises(ValueError, match="holds pickled objects beyond tensors"):
        load_artifact(work)
    assert not marker.exists()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    rewrite(vec_isa="avx512")
    with pytest.raises(ValueError, match="compiled for AVX512 and this CPU runs AVX2"):
        load_artifact(work)
    os.remove(dense)
    with pytest.raises(ValueError, match="its dense part .* is missing"):
        load_artifact(work)

