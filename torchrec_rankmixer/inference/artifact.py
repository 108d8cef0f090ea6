"""The exported artifact on disk, and loading it with torch + fbgemm only.

An export directory holds one of::

    model_sparse.ts + model_dense.aoti.pt2   the split artifact (the default): lookups in
                                             TorchScript, the dense part compiled by
                                             AOTInductor (inference/aoti.py)
    model.pt2                                torch.export program (fallback)
    model.ts                                 TorchScript (fallback)

and ``metadata.json``, the metadata that is also embedded in the model file
(``model_sparse.ts``, ``model.pt2`` or ``model.ts``), so that file is enough, with the
dense part of a split artifact beside it. Loading imports ``torch`` and ``fbgemm_gpu``
(which registers the embedding-lookup ops); it needs no torchrec_rankmixer code and no
config file. The call signature is ``module(dense, values, lengths) -> logits`` (see
:mod:`torchrec_rankmixer.inference.quantize`).
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple, Union

import torch

from torchrec_rankmixer.utils.files import sha256_file
from torchrec_rankmixer.utils.safe_load import check_pt2_archive

METADATA_FILE = "metadata.json"
EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.ts"
SPARSE_FILE = "model_sparse.ts"
DENSE_FILE = "model_dense.aoti.pt2"
# torch's CPU capabilities, weakest first; AOTInductor kernels need the exporter's ISA
_X86_ISAS = ("DEFAULT", "NO AVX", "AVX2", "AVX512")
ARTIFACT_FORMAT = "torchrec_rankmixer.inference"
ARTIFACT_VERSION = 1


@dataclass
class LoadedArtifact:
    """A loaded model and its metadata.

    Attributes:
        module: ``module(dense, values, lengths) -> logits [B, num_logits]``.
        metadata: the dict written by :func:`torchrec_rankmixer.inference.export.export_model`.
        path: the model file it came from.
    """

    module: Callable[..., torch.Tensor]
    metadata: Dict[str, Any]
    path: str


def resolve_model_file(path: Union[str, os.PathLike]) -> str:
    """The model file: ``path`` itself (the split artifact's sparse part for its dense part),
    or the model_sparse.ts / model.pt2 / model.ts inside directory ``path``.

    Example::

        >>> import tempfile
        >>> resolve_model_file(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: export directory '...' holds none of model_sparse.ts, model.pt2, model.ts
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (SPARSE_FILE, EXPORT_FILE, SCRIPT_FILE):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise ValueError(f"export directory {path!r} holds none of {SPARSE_FILE}, {EXPORT_FILE}, {SCRIPT_FILE}")
    if not os.path.isfile(path):
        raise ValueError(f"artifact {path!r} does not exist")
    if os.path.basename(path) == DENSE_FILE:  # the dense part: load the pair through its sparse part
        return resolve_model_file(os.path.join(os.path.dirname(path), SPARSE_FILE))
    return path


class SplitModule:
    """The split artifact as one callable: the sparse part's outputs into the dense part.

    Args:
        sparse: ``(dense, values, lengths) -> (dense, embedded)`` (``model_sparse.ts``).
        dense: ``(dense, embedded) -> logits`` (``model_dense.aoti.pt2``).

    Example::

        >>> both = SplitModule(lambda d, v, l: (d, v.float().view(-1, 1)), lambda d, e: d + e)
        >>> both(torch.ones(2, 1), torch.tensor([1, 2]), torch.ones(1, 2)).tolist()
        [[2.0], [3.0]]
    """

    def __init__(self, sparse: Callable[..., Tuple[torch.Tensor, torch.Tensor]],
                 dense: Callable[..., torch.Tensor]) -> None:
        self.sparse, self.dense = sparse, dense

    def __call__(self, dense: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.dense(*self.sparse(dense, values, lengths))  # (B, num_logits)


def _import_ops() -> None:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm.*)


def load_artifact(path: Union[str, os.PathLike]) -> LoadedArtifact:
    """Load an exported model: an export directory, or its model file (``model_sparse.ts``
or ``model_dense.aoti.pt2`` of a split artifact, which loads both parts; ``model.pt2``;
``model.ts``). ``module(dense, values, lengths)`` returns logits whatever the kind.

    Example::

        >>> load_artifact("/nonexistent/model.pt2")
        Traceback (most recent call last):
        ...
        ValueError: artifact '/nonexistent/model.pt2' does not exist
    """
    model_file = resolve_model_file(path)
    _import_ops()
    extra = {METADATA_FILE: ""}
    if model_file.endswith(".pt2"):
        # the deserializer logs one line per unused symbolic size; they are harmless
        serde_log = logging.getLogger("torch._export.serde.serialize")
        level = serde_log.level
        serde_log.setLevel(logging.ERROR)
        check_pt2_archive(model_file)  # no pickled entry may need torch's unsafe fallback
        try:
            program = torch.export.load(model_file, extra_files=extra)
        except Exception as e:  # noqa: BLE001 - a damaged archive, named
            raise ValueError(f"artifact {model_file!r} cannot be loaded: {type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:300]}") from e
        finally:
            serde_log.setLevel(level)
        module: Callable[..., torch.Tensor] = program.module()
    elif model_file.endswith(".ts"):
        try:
            module = torch.jit.load(model_file, _extra_files=extra, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - a damaged archive, named
            raise ValueError(f"artifact {model_file!r} cannot be loaded: {type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:300]}") from e
    else:
        raise ValueError(f"artifact {model_file!r} must end in .pt2 (torch.export) or .ts (TorchScript)")
    metadata = _read_metadata(model_file, extra[METADATA_FILE])
    if metadata.get("artifact") == "aoti":
        module = SplitModule(module, _load_dense_part(model_file, metadata))
    return LoadedArtifact(module=module, metadata=metadata, path=model_file)


def _read_metadata(model_file: str, raw: str) -> Dict[str, Any]:
    """The embedded metadata, checked for format and version."""
    if not raw:
        raise ValueError(f"{model_file!r} has no embedded {METADATA_FILE}; it was not exported "
                         "by rankmixer-export")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{model_file!r} has unreadable embedded {METADATA_FILE}: {e}") from e
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{model_file!r} metadata format ({metadata.get('format')!r}) must be "
                         f"{ARTIFACT_FORMAT!r}")
    if metadata.get("format_version") != ARTIFACT_VERSION:
        raise ValueError(f"{model_file!r} format_version ({metadata.get('format_version')!r}) "
                         f"must be {ARTIFACT_VERSION}")
    return metadata


def _load_dense_part(sparse_file: str, metadata: Dict[str, Any]) -> Callable[..., torch.Tensor]:
    """The AOTInductor package the split artifact's metadata names, after checking that it
    is that export's (SHA-256), holds no pickles, and that this CPU runs its kernels."""
    parts = metadata.get("parts") or {}
    path = os.path.join(os.path.dirname(sparse_file), DENSE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"split artifact {sparse_file!r}: its dense part {path!r} is missing")
    if sha256_file(path) != parts.get("dense_sha256"):
        raise ValueError(f"split artifact {sparse_file!r}: {path!r} is not the dense part exported with it "
                         "(SHA-256 differs); export again")
    isa, here = str(parts.get("vec_isa", "")).upper(), torch.backends.cpu.get_cpu_capability()
    if isa in _X86_ISAS and (here not in _X86_ISAS or _X86_ISAS.index(here) < _X86_ISAS.index(isa)):
        raise ValueError(f"split artifact {sparse_file!r}: its dense part was compiled for {isa} and this "
                         f"CPU runs {here}; export here, or with --artifact export (portable .pt2)")
    check_pt2_archive(path)
    try:
        return torch._inductor.aoti_load_package(path)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign package, named
        raise ValueError(f"dense part {path!r} cannot be loaded: {type(e).__name__}: "
                         f"{(str(e).strip().splitlines() or [''])[0][:300]}") from e
