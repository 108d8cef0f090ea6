"""Build the inference model: quantized embedding tables + cast (or int8) dense part.

Tables go through TorchRec's quantized EmbeddingBagCollection
(``torchrec.inference.modules.quantize_embeddings``, fbgemm ``IntNBit`` TBE kernels):
int8 (default), int4, fp16, or fp32 (no quantization, the float baseline). The dense
part is cast once to fp32, fp16 or bf16; at fp32 with quantized tables (the default) its
Linear layers, the cross layers and the unfused per-token FFNs run dynamic int8
(inference/int8_linear.py).

The result, :class:`RankMixerInferenceModule`, takes plain tensors, so exported
artifacts need no TorchRec types at their boundary:

- ``dense``: float32 [B, dense_in_features] ([B, 0] when the model has no dense input)
- ``values``: int64 [N], every id, feature after feature (KJT order)
- ``lengths``: int32 [F, B], ids per (feature, sample), features in metadata order
- returns float32 logits [B, num_logits]
"""

import copy
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.inference.modules import quantize_embeddings
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection
from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_rankmixer.inference.dense import pin_traceable_kernels
from torchrec_rankmixer.inference.int8_linear import quantize_dense_int8
from torchrec_rankmixer.models.spec import unwrap_model

TABLE_DTYPES: Dict[str, torch.dtype] = {
    "int8": torch.qint8,
    "int4": torch.quint4x2,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
DENSE_DTYPES: Dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
CPU_ROW_ALIGNMENT = 1  # fbgemm's own CPU default; TorchRec's default (16) pads int8 rows


@dataclass(frozen=True)
class QuantizationOptions:
    """How to turn a float model into an inference model.

    Args:
        table_dtype: ``"int8"`` (default), ``"int4"``, ``"fp16"`` or ``"fp32"``.
        dense_dtype: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"`` (the paper serves
            in half precision; on CPUs without native half matmuls fp32 is faster).
        dynamic_int8_linear: dynamic int8 for the dense part's Linear layers, cross
            layers and per-token FFNs (:func:`~torchrec_rankmixer.inference.int8_linear.quantize_dense_int8`;
            int8 weights per channel, activations per row, int32 accumulation). None (the
            default): on when the tables are quantized and ``dense_dtype="fp32"``, so
            ``table_dtype="fp32"`` stays the float baseline; ``False`` keeps the dense
            part float (docs/inference.md, "Decisions"). Needs ``dense_dtype="fp32"``.
        row_alignment: bytes each quantized table row is padded to; None picks 1
            (fbgemm's CPU default; artifacts here are CPU artifacts). TorchRec's own
            default is 16, which pads a 64-dim int8 row from 68 to 80 bytes.

    Example::

        >>> QuantizationOptions(table_dtype="int4").table_torch_dtype
        torch.quint4x2
        >>> [QuantizationOptions(**o).dynamic_int8_linear for o in ({}, {"dense_dtype": "fp16"}, {"table_dtype": "fp32"})]
        [True, False, False]
    """

    table_dtype: str = "int8"
    dense_dtype: str = "fp32"
    dynamic_int8_linear: Optional[bool] = None
    row_alignment: Optional[int] = None

    def __post_init__(self) -> None:
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(f"table_dtype ({self.table_dtype!r}) must be one of {list(TABLE_DTYPES)}")
        if self.dense_dtype not in DENSE_DTYPES:
            raise ValueError(f"dense_dtype ({self.dense_dtype!r}) must be one of {list(DENSE_DTYPES)}")
        if self.dynamic_int8_linear is None:  # the default rule: a quantized model, dense int8 too
            object.__setattr__(self, "dynamic_int8_linear", self.dense_dtype == "fp32" and self.table_dtype != "fp32")
        if not isinstance(self.dynamic_int8_linear, bool):
            raise ValueError(f"dynamic_int8_linear ({self.dynamic_int8_linear!r}) must be a bool")
        if self.dynamic_int8_linear and self.dense_dtype != "fp32":
            raise ValueError(
                f"dynamic_int8_linear needs dense_dtype='fp32' (got {self.dense_dtype!r}): "
                "dynamic int8 Linear takes fp32 activations"
            )
        if self.row_alignment is not None and (
            isinstance(self.row_alignment, bool)
            or not isinstance(self.row_alignment, int)
            or self.row_alignment < 1
        ):
            raise ValueError(f"row_alignment ({self.row_alignment!r}) must be a positive int")

    @property
    def table_torch_dtype(self) -> torch.dtype:
        return TABLE_DTYPES[self.table_dtype]

    @property
    def dense_torch_dtype(self) -> torch.dtype:
        return DENSE_DTYPES[self.dense_dtype]

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


class CastingSparseArch(nn.Module):
    """``sparse_arch`` that casts the pooled embeddings to the dense dtype.

    Keeps the ``embedding_bag_collection`` attribute path of TorchRec's DLRM.

    Args:
        embedding_bag_collection: float or quantized EBC.
        dtype: dtype of the returned KeyedTensor values [B, sum(dims)].

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        ...     name="t", embedding_dim=4, num_embeddings=10, feature_names=["a"])])
        >>> kjt = KeyedJaggedTensor(keys=["a"], values=torch.tensor([1, 2]),
        ...                         lengths=torch.tensor([1, 1]))
        >>> CastingSparseArch(ebc, torch.float16)(kjt).values().dtype
        torch.float16
    """

    def __init__(self, embedding_bag_collection: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.embedding_bag_collection = embedding_bag_collection
        self.dtype = dtype

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        kt = self.embedding_bag_collection(features)
        return KeyedTensor(
            keys=kt.keys(), length_per_key=kt.length_per_key(), values=kt.values().to(self.dtype)
        )


class RankMixerInferenceModule(nn.Module):
    """A quantized DLRM_RankMixer behind a plain-tensor signature (see module docstring).

    Args:
        model: the quantized DLRM_RankMixer (``validate_inputs=False``, eval mode).
        feature_names: the sparse features, in the order of ``lengths``' rows.
        dense_dtype: dtype the dense input is cast to before the dense arch.
        id_remap: optional :class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap`
            applied to ``values`` (managed-collision runs: those features take raw ids).
        feature_prep: optional :class:`~torchrec_rankmixer.features.prep.RawFeaturePrep`
            applied first (file runs: raw ids and raw dense columns in, as in training).

    Shapes:
        dense [B, dense_in], values [N], lengths [F, B] -> logits [B, num_logits] (fp32);
        with ``feature_prep``: its raw layout (dense [B, Dd], lengths [Fs, B]) instead.

    Example: see :func:`build_inference_model`, which builds it.
    """

    def __init__(
        self, model: nn.Module, feature_names: List[str], dense_dtype: torch.dtype,
        id_remap: Optional[nn.Module] = None, feature_prep: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.feature_names = list(feature_names)
        self.dense_dtype = dense_dtype
        self.id_remap = id_remap
        self.feature_prep = feature_prep

    def embed(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The sparse half: feature preparation, id remap, quantized lookups.

        Returns (dense [B, dense_in_features], embedded [B, sum(dims)]), both in the dense
        dtype: the inputs of :meth:`dense_forward`.
        """
        if self.feature_prep is not None:  # raw columns -> the model's ids and dense values
            dense, values, lengths = self.feature_prep(dense, values, lengths)
        if self.id_remap is not None:  # a Python constant when traced/exported
            values = self.id_remap(values, lengths)  # raw ids -> table rows
        kjt = KeyedJaggedTensor(
            keys=self.feature_names, values=values, lengths=lengths.reshape(-1)
        )  # stride B = lengths.shape[1]
        return dense.to(self.dense_dtype), self.model.embed(kjt)

    def dense_forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The dense half (``DLRM_RankMixer.dense_forward``): -> fp32 logits [B, num_logits]."""
        return self.model.dense_forward(dense, embedded).float()

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        return self.dense_forward(*self.embed(dense, values, lengths))  # (B, num_logits)


def _eval_mode(module: nn.Module) -> nn.Module:
    """eval() everywhere: dropout off, and the Sparse-MoE (when used) switches to its
    sparse inference execution (only the routed experts run)."""
    return module.eval()


def build_inference_model(
    model: nn.Module, options: QuantizationOptions = QuantizationOptions(),
    id_remap: Optional[nn.Module] = None, feature_prep: Optional[nn.Module] = None,
) -> RankMixerInferenceModule:
    """Quantize a trained (float, unsharded) DLRM_RankMixer for inference.

    The input model is not modified (a deep copy is quantized).

    Args:
        model: a DLRM_RankMixer (for sharded models, rebuild a plain one first, see
            :func:`torchrec_rankmixer.inference.export.export_model`).
        options: dtypes of tables and dense part.
        id_remap: optional frozen managed-collision remap
            (:class:`~torchrec_rankmixer.inference.id_remap.RawIdRemap`) put in front.
        feature_prep: optional training feature preparation
            (:class:`~torchrec_rankmixer.features.prep.RawFeaturePrep`) put first.

    Returns:
        :class:`RankMixerInferenceModule` in eval mode.

    Example::

        >>> from torchrec_rankmixer.models.spec import ModelSpec, TableSpec
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=2,
        ...                  dense_arch_layer_sizes=(8,), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 9, "num_tokens": 3, "num_layers": 1})
        >>> infer = build_inference_model(spec.build())
        >>> infer(torch.randn(4, 2), torch.randint(0, 20, (8,)),
        ...       torch.ones(2, 4, dtype=torch.int32)).shape
        torch.Size([4, 1])
    """
    # TorchRec's int4 tensor subclass cannot be moved under inference_mode
    with torch.inference_mode(False), torch.no_grad():
        return _build(unwrap_model(model), options, id_remap, feature_prep)


def _build(
    source: nn.Module, options: QuantizationOptions, id_remap: Optional[nn.Module] = None,
    feature_prep: Optional[nn.Module] = None,
) -> RankMixerInferenceModule:
    ebc = getattr(getattr(source, "sparse_arch", None), "embedding_bag_collection", None)
    if not isinstance(ebc, EmbeddingBagCollection):
        raise ValueError(
            f"build_inference_model needs a DLRM_RankMixer with a plain (unsharded) "
            f"EmbeddingBagCollection, got {type(ebc).__name__}; rebuild it from "
            "save_model/load_model or export_model, which gather sharded tables"
        )
    if any(p.is_meta for p in source.parameters()):
        raise ValueError("the model has parameters on the meta device; load weights first")
    work = _eval_mode(copy.deepcopy(source)).cpu()
    work.requires_grad_(False)
    work.validate_inputs = False  # the Predictor validates; the traced graph stays check-free
    work.reset_dense_path()  # eager on this copy: export traces it, AOTInductor compiles it
    pin_traceable_kernels(work)

    dense_dtype = options.dense_torch_dtype
    table_out = torch.float16 if dense_dtype == torch.float16 else torch.float32
    if options.table_dtype != "fp32":
        align = options.row_alignment or CPU_ROW_ALIGNMENT
        quant_prep_customize_row_alignment(work, [EmbeddingBagCollection, EmbeddingCollection], align)
        quantize_embeddings(  # the EBC and, for behaviour sequences, the EmbeddingCollection
            work, dtype=options.table_torch_dtype, inplace=True, output_dtype=table_out,
            additional_qconfig_spec_keys=[EmbeddingCollection],
            additional_mapping={EmbeddingCollection: QuantEmbeddingCollection},
        )
    for name, child in list(work.named_children()):
        if name != "sparse_arch":
            setattr(work, name, child.to(dense_dtype))
    if options.dynamic_int8_linear:
        for name, child in list(work.named_children()):
            if name != "sparse_arch":
                setattr(work, name, quantize_dense_int8(child))
    out_dtype = table_out if options.table_dtype != "fp32" else torch.float32
    if out_dtype != dense_dtype:
        work.sparse_arch = CastingSparseArch(work.sparse_arch.embedding_bag_collection, dense_dtype)
    if id_remap is not None and list(id_remap.feature_names) != list(source.feature_names):
        raise ValueError(
            f"id_remap features {list(id_remap.feature_names)} must be the model's {list(source.feature_names)}"
        )
    if feature_prep is not None and (
        list(feature_prep.model_feature_names) != list(source.feature_names)
        or len(feature_prep.kept_index) != source.dense_in_features
    ):
        raise ValueError(
            f"feature_prep gives features {list(feature_prep.model_feature_names)} and "
            f"{len(feature_prep.kept_index)} dense values; the model takes {list(source.feature_names)} "
            f"and {source.dense_in_features}"
        )
    return _eval_mode(RankMixerInferenceModule(
        work, list(source.feature_names), dense_dtype, id_remap, feature_prep))


def table_bytes(module: nn.Module) -> int:
    """Bytes the embedding tables of ``module`` occupy in memory: the float EBC's
    weights, or the quantized EBC's fbgemm TBE storage (rows with their scale/bias and
    row padding), as allocated.

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        >>> table_bytes(EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        ...     name="t", embedding_dim=4, num_embeddings=10, feature_names=["a"])]))
        160
    """
    total = 0
    for m in module.modules():
        for tbe in getattr(m, "_emb_modules", []):  # quantized EBC: IntNBit TBEs
            total += sum(
                t.numel() * t.element_size()
                for t in (tbe.weights_host, tbe.weights_dev, tbe.weights_uvm)
            )
        if isinstance(m, EmbeddingBagCollection):
            total += sum(p.numel() * p.element_size() for p in m.parameters())
    return total


def module_bytes(module: nn.Module) -> int:
    """Bytes of the whole model: :func:`table_bytes` plus every other state_dict
    entry (dense weights, buffers; packed dynamic-int8 Linear weights included).

    Example::

        >>> module_bytes(nn.Linear(4, 2))
        40
    """
    tables = [
        name + "." for name, m in module.named_modules()
        if isinstance(m, EmbeddingBagCollection) or getattr(m, "_emb_modules", None) is not None
    ]
    total = table_bytes(module)
    for key, value in module.state_dict().items():
        if any(key.startswith(prefix) for prefix in tables):
            continue
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, tuple):  # packed params: (weight, bias)
            total += sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
    return total
