"""The exported artifact on disk, and loading it with torch + fbgemm only.

An export directory holds::

    model.pt2        torch.export program (or model.ts: TorchScript, the fallback)
    metadata.json    the same metadata that is embedded in the model file

The model file embeds ``metadata.json`` (torch.export ``extra_files`` / TorchScript
``_extra_files``), so the single model file is enough. Loading imports ``torch`` and
``fbgemm_gpu`` (which registers the embedding-lookup ops); it needs no
torchrec_rankmixer code and no config file. The call signature is
``module(dense, values, lengths) -> logits`` (see
:mod:`torchrec_rankmixer.inference.quantize`).
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Union

import torch

from torchrec_rankmixer.utils.safe_load import check_pt2_archive

METADATA_FILE = "metadata.json"
EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.ts"
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
    """The model file: ``path`` itself, or the model.pt2 / model.ts inside directory ``path``.

    Example::

        >>> import tempfile
        >>> resolve_model_file(tempfile.mkdtemp())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: export directory '...' holds neither model.pt2 nor model.ts
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (EXPORT_FILE, SCRIPT_FILE):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise ValueError(f"export directory {path!r} holds neither {EXPORT_FILE} nor {SCRIPT_FILE}")
    if not os.path.isfile(path):
        raise ValueError(f"artifact {path!r} does not exist")
    return path


def _import_ops() -> None:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm.*)


def load_artifact(path: Union[str, os.PathLike]) -> LoadedArtifact:
    """Load an exported model (``.pt2`` or ``.ts``, or an export directory).

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
    raw = extra[METADATA_FILE]
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
    return LoadedArtifact(module=module, metadata=metadata, path=model_file)
