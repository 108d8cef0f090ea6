"""Export a trained DLRM_RankMixer (module or checkpoint) to a portable artifact.

Steps: rebuild/unwrap the float model -> :func:`build_inference_model` (quantized
tables, cast dense part, eval mode) -> the first kind that can be written (``KINDS``):
the split artifact (lookups in TorchScript, dense part compiled by AOTInductor;
inference/aoti.py), ``torch.export`` with a dynamic batch size (``model.pt2``), or
TorchRec's FX tracer + ``torch.jit.script`` (``model.ts``; e.g. dynamic int8 Linear,
whose packed weights neither AOTInductor nor torch.export take). Metadata (feature
names, tables, model spec, dtypes, versions) is embedded in the model file and written
beside it as ``metadata.json``.
"""

import json
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from torchrec_rankmixer.inference.aoti import write_split
from torchrec_rankmixer.inference.artifact import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    DENSE_FILE,
    EXPORT_FILE,
    METADATA_FILE,
    SCRIPT_FILE,
    SPARSE_FILE,
)
from torchrec_rankmixer.inference.model_file import full_state_dict, load_model
from torchrec_rankmixer.inference.quantize import (
    QuantizationOptions,
    RankMixerInferenceModule,
    build_inference_model,
    module_bytes,
    table_bytes,
)
from torchrec_rankmixer.inference.scripting import script_inference_module
from torchrec_rankmixer.models.spec import ModelSpec, unwrap_model
from torchrec_rankmixer.modules.moe.layer import PerTokenSparseMoE
from torchrec_rankmixer.utils.files import DirectoryLock, atomic_write_text, atomic_write_with
from torchrec_rankmixer.version import __version__

# --artifact -> the kinds tried, in order (metadata "artifact" names the one written)
KINDS: Dict[str, Tuple[str, ...]] = {
    "auto": ("aoti", "torch.export", "torchscript"), "aoti": ("aoti",),
    "export": ("torch.export",), "torchscript": ("torchscript",),
}
ARTIFACT_TYPES = tuple(KINDS)
FILES_OF: Dict[str, Tuple[str, ...]] = {
    "aoti": (SPARSE_FILE, DENSE_FILE), "torch.export": (EXPORT_FILE,), "torchscript": (SCRIPT_FILE,),
}
EXAMPLE_BATCH = 4


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the model file (``model_sparse.ts`` of the split artifact, ``model.pt2`` or ``model.ts``).
        metadata: the embedded metadata.
        module: the in-memory inference module that was exported (for parity checks).

    On ranks other than 0 of a distributed export, path is "" and module is None.
    """

    path: str
    metadata: Dict[str, Any]
    module: Optional[RankMixerInferenceModule]


def input_layout(spec: ModelSpec, feature_prep: Optional[nn.Module] = None) -> Tuple[List[str], List[int], int]:
    """What the artifact takes: (sparse input features in ``lengths`` row order, their
    table rows, dense width). With ``feature_prep`` these are the raw training columns,
    else the model's own features.

    Example::

        >>> from torchrec_rankmixer.models.spec import TableSpec
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=0,
        ...                  dense_arch_layer_sizes=(), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 16, "num_tokens": 2, "num_layers": 1})
        >>> input_layout(spec)
        (['a', 'b'], [20, 20], 0)
    """
    if feature_prep is None:
        return list(spec.feature_names), list(spec.num_embeddings), spec.dense_in_features
    return list(feature_prep.sparse_features), [int(r) for r in feature_prep.rows], len(feature_prep.dense_features)


def example_inputs(
    spec: ModelSpec, batch_size: int = EXAMPLE_BATCH, feature_prep: Optional[nn.Module] = None
) -> tuple:
    """(dense [B, dense_in], values [F*B], lengths [F, B]): one id 0 per bag (with
    ``feature_prep``: its raw layout, dense [B, Dd] and lengths [Fs, B]).

    Example::

        >>> from torchrec_rankmixer.models.spec import TableSpec
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=0,
        ...                  dense_arch_layer_sizes=(), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 16, "num_tokens": 2, "num_layers": 1})
        >>> [tuple(t.shape) for t in example_inputs(spec, 3)]
        [(3, 0), (6,), (2, 3)]
    """
    features, _, dense_in = input_layout(spec, feature_prep)
    num_features = len(features)
    dense = torch.zeros(batch_size, dense_in)
    values = torch.zeros(num_features * batch_size, dtype=torch.int64)
    lengths = torch.ones(num_features, batch_size, dtype=torch.int32)
    return dense, values, lengths


def drop_table_views(module: nn.Module) -> int:
    """Remove the quantized EBC's per-table ``weight`` buffers (returns how many).

    They are views of fbgemm's packed table buffer, kept for state_dict loading; the
    forward reads only the packed buffer. Serialisers store views and the buffer
    separately, so keeping them roughly doubles (int4: more) the tables on disk.

    Example::

        >>> drop_table_views(nn.Linear(2, 2))  # no quantized EBC inside
        0
    """
    dropped = 0
    for m in module.modules():
        bags = getattr(m, "embedding_bags", None)
        if getattr(m, "_emb_modules", None) is None or not isinstance(bags, nn.ModuleDict):
            continue
        for table in bags.values():
            for name in list(table._buffers):
                del table._buffers[name]
                dropped += 1
    return dropped


def moe_execution(module: nn.Module) -> Optional[str]:
    """How the Sparse-MoE layers in ``module`` run in eval mode: ``"sparse"`` (only the
    h_infer-active experts), ``"dense"`` (every expert, h_infer gates), ``"dense_h_train"``
    (every expert, DTSI's h_train gates) or None (no MoE). Mixed settings are listed
    joined by ``"+"``.

    Example::

        >>> moe_execution(nn.Linear(2, 2)) is None
        True
        >>> moe_execution(PerTokenSparseMoE(num_tokens=2, d_model=4, num_experts=2, expert_hidden=4))
        'sparse'
    """
    kinds = []
    for m in module.modules():
        if isinstance(m, PerTokenSparseMoE):
            kind = "dense_h_train" if m.eval_router == "train" else m.execution
            if kind not in kinds:
                kinds.append(kind)
    return "+".join(kinds) if kinds else None


def _torch_export(module: RankMixerInferenceModule, spec: ModelSpec, path: str, extra: Dict[str, str]) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    num_ids = torch.export.Dim("num_ids", min=1, max=1 << 30)
    program = torch.export.export(
        module,
        example_inputs(spec, feature_prep=module.feature_prep),
        dynamic_shapes=({0: batch}, {0: num_ids}, {1: batch}),
        strict=False,
    )
    atomic_write_with(path, lambda tmp: torch.export.save(program, tmp, extra_files=extra))


def _torchscript(module: nn.Module, path: str, extra: Dict[str, str]) -> None:
    scripted = script_inference_module(module)
    atomic_write_with(path, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))


def _versions() -> Dict[str, str]:
    import fbgemm_gpu
    import torchrec

    return {
        "torchrec_rankmixer": __version__,
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", "unknown"),
        "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "unknown"),
    }


def build_metadata(
    spec: ModelSpec,
    options: QuantizationOptions,
    module: RankMixerInferenceModule,
    float_model: nn.Module,
    artifact: str,
    dense_feature_names: Sequence[str],
    fallback_reason: Optional[str],
    moe_exec: Optional[str] = None,
) -> Dict[str, Any]:
    """The artifact's metadata dict (JSON types only; keys listed in docs/inference.md).

    Args:
        spec: the model's spec.
        options: the quantization options used.
        module: the inference module (for its table/model bytes).
        float_model: the float model (for the float table/model bytes).
        artifact: ``"torch.export"`` or ``"torchscript"``.
        dense_feature_names: dense column names.
        fallback_reason: why torch.export was not used, or None.
        moe_exec: how the artifact's Sparse-MoE layers run (:func:`moe_execution`).
    """
    prep = module.feature_prep
    features, rows, dense_in = input_layout(spec, prep)
    raw_ids = list(getattr(module.id_remap, "raw_id_features", []))
    if prep is not None:  # hashed / taken-modulo features take any id too
        raw_ids = [f for f in features if f in raw_ids or f in prep.raw_id_features]
    return {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_VERSION,
        "artifact": artifact,
        "fallback_reason": fallback_reason,
        "moe_execution": moe_exec,
        "versions": _versions(),
        "created_unix": int(time.time()),
        "inputs": {
            "dense": {"shape": ["B", dense_in], "dtype": "float32"},
            "values": {"shape": ["N"], "dtype": "int64",
                       "layout": "all ids of feature_names[0], then feature_names[1], ..."},
            "lengths": {"shape": [len(features), "B"], "dtype": "int32"},
        },
        "output": {"shape": ["B", spec.num_logits], "dtype": "float32", "kind": "logits"},
        "feature_names": features,
        "num_embeddings": rows,
        "raw_id_features": raw_ids,
        "preprocessing": prep.to_metadata() if prep is not None else None,
        "dense_feature_names": list(dense_feature_names),
        "num_logits": spec.num_logits,
        "task": spec.task,
        "quantization": options.to_dict(),
        "sizes_bytes": {
            "tables_float": table_bytes(float_model),
            "tables": table_bytes(module),
            "model_float": module_bytes(float_model),
            "model": module_bytes(module),
        },
        "model_spec": spec.to_dict(),
    }


def _is_writer() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _as_float_model(source: Union[nn.Module, str, os.PathLike]) -> Optional[nn.Module]:
    """A plain float DLRM_RankMixer on CPU from a module (plain or DMP) or a checkpoint;
    None on ranks other than 0 (after taking part in gathering sharded tables)."""
    if isinstance(source, (str, os.PathLike)):
        return load_model(source)
    if not isinstance(source, nn.Module):
        raise ValueError(f"source ({type(source).__name__}) must be an nn.Module or a checkpoint path")
    inner = unwrap_model(source)
    ebc = getattr(getattr(inner, "sparse_arch", None), "embedding_bag_collection", None)
    if ebc is not None and type(ebc).__module__.startswith("torchrec.distributed"):
        spec = ModelSpec.from_model(inner)  # sharded: rebuild plain, load gathered weights
        state = full_state_dict(source)  # collective: every rank takes part
        if not _is_writer():
            return None
        model = spec.build()
        model.load_state_dict(state, strict=True)
        return model.eval()
    return inner


def export_model(
    source: Union[nn.Module, str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    options: QuantizationOptions = QuantizationOptions(),
    artifact: str = "auto",
    dense_feature_names: Optional[Sequence[str]] = None,
    id_remap: Optional[nn.Module] = None,
    feature_prep: Optional[nn.Module] = None,
    spec: Optional[ModelSpec] = None,
) -> ExportResult:
    """Quantize and export a DLRM_RankMixer.

    Args:
        source: a DLRM_RankMixer (plain or inside DistributedModelParallel: under
            torch.distributed every rank calls this and rank 0 writes) or the path of a
            :func:`save_model` file.
        output_dir: directory for the model file(s) and ``metadata.json``.
        options: table and dense dtypes.
        artifact: ``"auto"`` (the split artifact, ``model_sparse.ts`` +
            ``model_dense.aoti.pt2``; if that fails torch.export's ``model.pt2``; if that
            fails TorchScript's ``model.ts``), ``"aoti"``, ``"export"`` or ``"torchscript"``
            (that kind only).
        dense_feature_names: names of the dense columns for file scoring (default
            ``dense_0 .. dense_{n-1}``).
        id_remap: a frozen managed-collision remap
            (:class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap`) built into the
            artifact: its features then take raw ids (metadata ``raw_id_features``).
        feature_prep: training's feature preparation
            (:class:`~torchrec_rankmixer.features.prep.RawFeaturePrep`) built into
            the artifact: it then takes the raw training columns (metadata
            ``preprocessing``; ``dense_feature_names`` default to its dense columns).
        spec: the model's :class:`ModelSpec` when the caller built the model from it
            (export of a run); default: read off the model (:meth:`ModelSpec.from_model`).
    """
    if artifact not in ARTIFACT_TYPES:
        raise ValueError(f"artifact ({artifact!r}) must be one of {list(ARTIFACT_TYPES)}")
    float_model = _as_float_model(source)
    if float_model is None or not _is_writer():
        return ExportResult(path="", metadata={}, module=None)
    spec = spec if spec is not None else ModelSpec.from_model(float_model)
    inputs, _, dense_in = input_layout(spec, feature_prep)
    names: List[str] = list(dense_feature_names) if dense_feature_names is not None else (
        [f"dense_{i}" for i in range(dense_in)] if feature_prep is None else list(feature_prep.dense_features)
    )
    if len(names) != dense_in or len(set(names)) != len(names):
        raise ValueError(
            f"dense_feature_names ({names}) must be {dense_in} distinct names"
        )
    clash = sorted(set(names) & set(inputs))
    if clash:
        raise ValueError(f"dense_feature_names {clash} are also sparse feature names")
    module = build_inference_model(float_model, options, id_remap, feature_prep)
    drop_table_views(module)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"export output {os.fspath(output_dir)!r} is a file, not a directory")
    os.makedirs(output_dir, exist_ok=True)
    lock = DirectoryLock(output_dir, "export output")  # one export per output directory
    try:
        return _write_artifact(module, spec, options, float_model, names, artifact, os.fspath(output_dir))
    finally:
        lock.release()


def _write_artifact(
    module: RankMixerInferenceModule, spec: ModelSpec, options: QuantizationOptions, float_model: nn.Module,
    names: List[str], artifact: str, output_dir: str,
) -> ExportResult:
    """The model file(s) of the first kind in ``KINDS[artifact]`` that can be written, and
    ``metadata.json``, each written atomically into ``output_dir``; files of other kinds
    left there by an earlier export are removed."""
    reasons: List[str] = []
    kinds = KINDS[artifact]
    for kind in kinds:
        def meta(parts: Optional[Dict[str, str]] = None, kind_: str = kind) -> Dict[str, str]:
            data = build_metadata(spec, options, module, float_model, kind_, names,
                                  "; ".join(reasons) or None, moe_execution(module))
            if parts is not None:
                data["parts"] = parts
            return {METADATA_FILE: json.dumps(data, sort_keys=True)}

        try:
            path, extra = _write_kind(kind, module, spec, output_dir, meta)
            break
        except Exception as exc:  # noqa: BLE001 - recorded, then the next kind runs
            if kind == kinds[-1]:
                raise
            reasons.append(f"{kind}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}")
            warnings.warn(f"{reasons[-1]}; trying {kinds[kinds.index(kind) + 1]}", UserWarning, stacklevel=2)
    for stale in {f for files in FILES_OF.values() for f in files} - set(FILES_OF[kind]):
        if os.path.exists(os.path.join(output_dir, stale)):
            os.remove(os.path.join(output_dir, stale))
    atomic_write_text(os.path.join(output_dir, METADATA_FILE),
                      json.dumps(json.loads(extra[METADATA_FILE]), indent=2, sort_keys=True))
    return ExportResult(path=path, metadata=json.loads(extra[METADATA_FILE]), module=module)


def _write_kind(
    kind: str, module: RankMixerInferenceModule, spec: ModelSpec, output_dir: str,
    meta: Callable[..., Dict[str, str]],
) -> Tuple[str, Dict[str, str]]:
    """Write one kind of model file; returns (its path, its embedded metadata)."""
    if kind == "aoti":
        return write_split(module, example_inputs(spec, feature_prep=module.feature_prep), output_dir, meta, atomic_write_with)
    extra = meta()
    if kind == "torch.export":
        path = os.path.join(output_dir, EXPORT_FILE)
        _torch_export(module, spec, path, extra)
    else:
        path = os.path.join(output_dir, SCRIPT_FILE)
        _torchscript(module, path, extra)
    return path, extra
