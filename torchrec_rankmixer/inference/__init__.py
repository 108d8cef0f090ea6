"""Inference: quantize, export and serve DLRM_RankMixer (imports TorchRec).

Steps (docs/inference.md): ``save_model`` (or keep the module, or a
``rankmixer-train`` run directory: ``export_from_run_dir``) -> ``export_model``
(int8/int4/fp16 tables via TorchRec's quantized EmbeddingBagCollection; a dynamic-int8
(the default with quantized tables), fp32, fp16 or bf16 dense part; by default the split artifact, lookups in TorchScript + the
dense part compiled by AOTInductor, with torch.export ``.pt2`` and TorchScript as
fallbacks) ->
``Predictor`` (checked inputs, CSV/Parquet scoring).
"""

from torchrec_rankmixer.inference.artifact import LoadedArtifact, load_artifact
from torchrec_rankmixer.inference.model_file import full_state_dict, load_model, save_model
from torchrec_rankmixer.inference.export import ExportResult, export_model
from torchrec_rankmixer.inference.from_run import RunCheckpoint, export_from_run_dir, load_run_model
from torchrec_rankmixer.inference.inputs import InputSchema
from torchrec_rankmixer.inference.predictor import Predictor
from torchrec_rankmixer.inference.quantize import (
    QuantizationOptions,
    RankMixerInferenceModule,
    build_inference_model,
    table_bytes,
)

__all__ = [
    "ExportResult",
    "InputSchema",
    "LoadedArtifact",
    "Predictor",
    "QuantizationOptions",
    "RankMixerInferenceModule",
    "RunCheckpoint",
    "build_inference_model",
    "export_from_run_dir",
    "export_model",
    "full_state_dict",
    "load_artifact",
    "load_model",
    "load_run_model",
    "save_model",
    "table_bytes",
]
