"""The split artifact: the embedding lookups in TorchScript, the dense part compiled
ahead of time by AOTInductor (as TorchRec serving stacks split sparse and dense).

- ``model_sparse.ts``: :class:`SparseHalf`, TorchScript (TorchRec's FX tracer, then
  ``torch.jit.script``): feature preparation, id remap, fbgemm's quantized EBC / EC
  lookups, sequence pooling. ``(dense, values, lengths) -> (dense, embedded)`` in the
  dense dtype. It embeds the artifact's metadata, which names the dense part and holds
  its SHA-256, so a part from another export is refused.
- ``model_dense.aoti.pt2``: :class:`DenseHalf` (dense arch, tokenizer, encoder, heads)
  through ``torch.export`` with a dynamic batch, then
  ``torch._inductor.aoti_compile_and_package``: a shared library of C++ kernels for the
  exporting machine's vector ISA (metadata ``parts.vec_isa``) with the weights inside.
  ``(dense, embedded) -> logits [B, num_logits]``.

fbgemm's TBE forward cannot go through AOTInductor ("input_tensor must be a
FunctionalTensor"), hence the split. Loading: :func:`~torchrec_rankmixer.inference.artifact.load_artifact`.
"""

import os
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from torchrec_rankmixer.inference.artifact import DENSE_FILE, SPARSE_FILE
from torchrec_rankmixer.inference.quantize import RankMixerInferenceModule
from torchrec_rankmixer.inference.scripting import script_inference_module
from torchrec_rankmixer.utils.files import sha256_file

MAX_BATCH = 1 << 20


class SparseHalf(nn.Module):
    """The lookups of a :class:`RankMixerInferenceModule` (shares its modules).

    Shapes: dense [B, Dd], values [N], lengths [F, B] (the artifact's inputs) ->
    (dense [B, dense_in_features], embedded [B, sum(dims)]), in the dense dtype.

    Example::

        >>> from torchrec_rankmixer.inference.quantize import build_inference_model
        >>> from torchrec_rankmixer.models.spec import ModelSpec, TableSpec
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=2,
        ...                  dense_arch_layer_sizes=(8,), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 9, "num_tokens": 3, "num_layers": 1})
        >>> infer = build_inference_model(spec.build())
        >>> args = (torch.randn(4, 2), torch.randint(0, 20, (8,)), torch.ones(2, 4, dtype=torch.int32))
        >>> dense, embedded = SparseHalf(infer)(*args)
        >>> embedded.shape, torch.equal(DenseHalf(infer)(dense, embedded), infer(*args))
        (torch.Size([4, 16]), True)
    """

    def __init__(self, module: RankMixerInferenceModule) -> None:
        super().__init__()
        self.module = module

    def forward(
        self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.module.embed(dense, values, lengths)


class DenseHalf(nn.Module):
    """The dense part of a :class:`RankMixerInferenceModule` (shares its modules).

    Shapes: dense [B, dense_in_features], embedded [B, sum(dims)] -> logits [B, num_logits].
    Example: :class:`SparseHalf`'s.
    """

    def __init__(self, module: RankMixerInferenceModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.module.dense_forward(dense, embedded)


def _vec_isa() -> str:
    """The vector ISA inductor generates CPU kernels for on this machine (``"avx2"``,
    ``"avx512"``, ...; ``""`` for none)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa())


def write_split(
    module: RankMixerInferenceModule,
    example: tuple,
    output_dir: str,
    metadata: Callable[[Dict[str, str]], Dict[str, str]],
    atomic: Callable[[str, Callable[[str], None]], None],
) -> Tuple[str, Dict[str, str]]:
    """Write ``model_dense.aoti.pt2``, then ``model_sparse.ts`` (which names the first).
    Called by :func:`~torchrec_rankmixer.inference.export.export_model` (``artifact="aoti"``
    or ``"auto"``), which holds the directory's lock; that is its example.

    Args:
        module: the inference module (eval mode, kernels pinned).
        example: example artifact inputs (dense, values, lengths), batch > 1.
        output_dir: the (locked) export directory.
        metadata: ``parts -> {"metadata.json": text}``, the embedded metadata for this
            artifact given its ``parts`` entry.
        atomic: writes a file through a temporary beside it (``utils.files.atomic_write_with``).

    Returns:
        (the path of ``model_sparse.ts``, the file that embeds the metadata; that metadata).
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        dense, embedded = module.embed(*example)
    program = torch.export.export(
        DenseHalf(module), (dense, embedded), dynamic_shapes=({0: batch}, {0: batch}), strict=False)
    dense_path = os.path.join(output_dir, DENSE_FILE)
    atomic(dense_path, lambda tmp: _aoti_package(program, tmp))
    parts = {"sparse": SPARSE_FILE, "dense": DENSE_FILE, "dense_sha256": sha256_file(dense_path),
             "vec_isa": _vec_isa()}
    extra = metadata(parts)
    sparse_path = os.path.join(output_dir, SPARSE_FILE)
    scripted = script_inference_module(SparseHalf(module))
    atomic(sparse_path, lambda tmp: torch.jit.save(scripted, tmp, _extra_files=extra))
    return sparse_path, extra


def _aoti_package(program: torch.export.ExportedProgram, path: str) -> None:
    # weights inside the shared library: the package holds no pickled tensors
    torch._inductor.aoti_compile_and_package(
        program, package_path=path, inductor_configs={"aot_inductor.package_constants_in_so": True})

