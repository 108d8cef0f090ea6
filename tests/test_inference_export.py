"""Export: .pt2 and TorchScript artifacts load in a fresh process without
torchrec_rankmixer and give exactly the in-memory quantized model's predictions."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from inference_helpers import artifact_inputs, small_model
from torchrec_rankmixer.inference.artifact import load_artifact, resolve_model_file
from torchrec_rankmixer.inference.checkpoint import save_checkpoint
from torchrec_rankmixer.inference.export import export_model
from torchrec_rankmixer.inference.quantize import QuantizationOptions

# Runs in a fresh interpreter (cwd: a temp dir, no PYTHONPATH): importing
# torchrec_rankmixer raises, and this code imports only torch and fbgemm_gpu.
FRESH_LOADER = textwrap.dedent(
    """
    import json, sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchrec_rankmixer":
                raise ImportError("training code must not be needed")
    sys.meta_path.insert(0, _Block())
    import torch
    import fbgemm_gpu  # registers the fbgemm embedding ops
    inputs = torch.load(sys.argv[1])
    for pair in sys.argv[2:]:
        model_file, out_file = pair.split("=")
        extra = {"metadata.json": ""}
        if model_file.endswith(".pt2"):
            module = torch.export.load(model_file, extra_files=extra).module()
        else:
            module = torch.jit.load(model_file, _extra_files=extra)
        meta = json.loads(extra["metadata.json"])
        torch.save([module(*args) for args in inputs], out_file)
        leaked = sorted(m for m in sys.modules if m.startswith("torchrec_rankmixer"))
        print(json.dumps({"features": meta["feature_names"], "leaked": leaked,
                          "torchrec_imported": "torchrec" in sys.modules}))
    """
)


def _run_fresh(model_files, inputs, tmp_path):
    inputs_file = tmp_path / "inputs.pt"
    torch.save(inputs, inputs_file)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    outs, reports = [], []
    out_files = [tmp_path / f"outs{i}.pt" for i in range(len(model_files))]
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOADER, str(inputs_file)]
        + [f"{m}={o}" for m, o in zip(model_files, out_files)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.strip().splitlines()[-len(model_files):]:
        reports.append(json.loads(line))
    for f in out_files:
        outs.append(torch.load(f))
    return outs, reports


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A .pt2 (int8 tables, from a checkpoint) and a .ts (int4 tables, fp16 dense)."""
    root = tmp_path_factory.mktemp("exported")
    model = small_model(seed=6)
    ckpt = root / "ckpt.pt"
    save_checkpoint(model, ckpt)
    pt2 = export_model(ckpt, root / "pt2", dense_feature_names=["a", "b", "c"])
    ts = export_model(model, root / "ts", QuantizationOptions(table_dtype="int4", dense_dtype="fp16"),
                      artifact="torchscript")
    return pt2, ts


def test_fresh_process_matches_in_memory(tmp_path, exported):
    pt2, ts = exported
    assert pt2.path.endswith(".pt2") and ts.path.endswith(".ts")
    inputs = [artifact_inputs(b, i) for i, b in enumerate((1, 7, 64))]  # dynamic batch
    outs, reports = _run_fresh([pt2.path, ts.path], inputs, tmp_path)
    for result, out, report in zip((pt2, ts), outs, reports):
        assert report["features"] == ["f0", "f1", "f2", "f3"]
        assert report["leaked"] == []
        assert report["torchrec_imported"] is False  # torch + fbgemm_gpu suffice
        with torch.inference_mode():
            for args, o in zip(inputs, out):
                assert o.shape == (args[0].shape[0], 1)
                assert torch.equal(o, result.module(*args))


def test_checkpoint_source_and_metadata(exported):
    result = exported[0]
    export_dir = os.path.dirname(result.path)
    with open(os.path.join(export_dir, "metadata.json")) as f:
        meta = json.load(f)
    assert meta == result.metadata == load_artifact(export_dir).metadata
    assert meta["artifact"] == "torch.export" and meta["fallback_reason"] is None
    assert meta["dense_feature_names"] == ["a", "b", "c"]
    assert meta["num_embeddings"] == [50, 50, 50, 50]
    assert meta["quantization"]["table_dtype"] == "int8"
    assert meta["model_spec"]["tables"][0]["feature_names"] == ["f0", "f1"]
    assert set(meta["versions"]) == {"torchrec_rankmixer", "torch", "torchrec", "fbgemm_gpu"}
    assert meta["sizes_bytes"]["tables"] < meta["sizes_bytes"]["tables_float"]
    args = artifact_inputs(5, 3)
    assert torch.equal(load_artifact(result.path).module(*args), result.module(*args))


def test_dynamic_int8_falls_back_to_torchscript(tmp_path):
    with pytest.warns(UserWarning, match="torch.export failed .*; writing TorchScript instead"):
        result = export_model(small_model(), tmp_path, QuantizationOptions(dynamic_int8_linear=True))
    assert result.path.endswith(".ts")
    assert result.metadata["artifact"] == "torchscript"
    assert "LinearPackedParamsBase" in result.metadata["fallback_reason"]
    assert not (tmp_path / "model.pt2").exists()
    args = artifact_inputs(4, 0)
    assert torch.equal(load_artifact(tmp_path).module(*args), result.module(*args))
    with pytest.raises(Exception):
        export_model(small_model(), tmp_path / "strict", QuantizationOptions(dynamic_int8_linear=True),
                     artifact="export")


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
    with pytest.raises(ValueError, match="holds neither model.pt2 nor model.ts"):
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
