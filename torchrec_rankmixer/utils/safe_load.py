"""Loading checkpoints and artifacts without running code from the files.

Pickle runs whatever a file tells it to. Three places in torch would unpickle our files
with the full unpickler:

- DCP's ``.metadata`` (``FileSystemReader.read_metadata``: ``pickle.load``);
- DCP's non-tensor entries (``DefaultLoadPlanner.load_bytes``: ``torch.load(...,
  weights_only=False)``);
- a ``.pt2`` archive's pickled weights, constants and sample inputs (torch.export falls
  back to ``weights_only=False`` when the safe load fails).

Here DCP reads go through :class:`SafeFileSystemReader` (a restricted unpickler that
allows only DCP's own metadata types) and :class:`SafeLoadPlanner` (``weights_only=True``),
and :func:`check_pt2_archive` loads every pickled entry of a ``.pt2`` with
``weights_only=True`` first, refusing the file when one needs more, so torch's fallback
never runs. Each refusal is a ``ValueError`` that names the file.
"""

import io
import json
import os
import pickle
import zipfile
from typing import Any, Dict, Set, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

_DCP_METADATA_TYPES = ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties",
                       "ChunkStorageMetadata", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
SAFE_GLOBALS: Set[Tuple[str, str]] = {
    *(("torch.distributed.checkpoint.metadata", n) for n in _DCP_METADATA_TYPES),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only :data:`SAFE_GLOBALS` and torch dtypes; anything else is refused.

    Example::

        >>> import pickle, io
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(torch.Size([2])))).load()
        torch.Size([2])
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: refusing to unpickle builtins.print (not a checkpoint metadata type)
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (not a checkpoint metadata type)")


class SafeFileSystemReader(FileSystemReader):
    """DCP's FileSystemReader whose ``.metadata`` goes through :class:`RestrictedUnpickler`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
            raise ValueError(f"checkpoint metadata {os.fspath(path)!r} is not a DCP metadata file: {e}") from e
        if not isinstance(metadata, Metadata):
            raise ValueError(f"checkpoint metadata {os.fspath(path)!r} holds a {type(metadata).__name__}, not DCP Metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner with non-tensor entries read by ``torch.load(...,
    weights_only=True)`` (plain Python values and tensors only)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"checkpoint entry {read_item.dest_index.fqn!r} holds objects that are not "
                             f"plain values or tensors; refusing to load it: {e}") from e
        patched = io.BytesIO()
        torch.save(obj, patched)
        patched.seek(0)
        super().load_bytes(read_item, patched)


def dcp_load(state: Dict[str, Any], path: str, no_dist: bool = False) -> None:
    """``dcp.load(state, checkpoint_id=path)`` in place, through the safe reader and planner.

    The metadata is read once before (a refused or unreadable file is a plain ValueError
    naming it, not DCP's multi-rank CheckpointException)."""
    dcp_metadata(path)
    dcp.load(state, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner(), no_dist=no_dist)


def dcp_metadata(path: str) -> Dict[str, Any]:
    """``state_dict_metadata`` (fqn -> storage metadata) of the DCP checkpoint ``path``."""
    try:
        return SafeFileSystemReader(path).read_metadata().state_dict_metadata
    except (OSError, RuntimeError) as e:
        raise ValueError(f"cannot read checkpoint {path!r}: {e}") from e


def check_pt2_archive(path: str) -> None:
    """Load every pickled entry of a ``.pt2`` archive with ``weights_only=True`` (tensors and
    plain values only); ValueError, naming the entry, when one needs the full unpickler.

    Example::

        >>> check_pt2_archive("/nonexistent.pt2")
        Traceback (most recent call last):
        ...
        ValueError: artifact '/nonexistent.pt2' is not a readable .pt2 archive: [Errno 2] No such file or directory: '/nonexistent.pt2'
    """
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"artifact {path!r} is not a readable .pt2 archive: {e}") from e
    with archive:
        names = archive.namelist()
        pickled = [n for n in names if "/data/sample_inputs/" in n]
        for config in (n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))):
            payloads = json.loads(archive.read(config)).get("config", {})
            folder = os.path.dirname(config)
            pickled += [f"{folder}/{p['path_name']}" for p in payloads.values() if p.get("use_pickle")]
        for name in pickled:
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception as e:  # noqa: BLE001 - any failure means: not plain tensors
                raise ValueError(
                    f"artifact {path!r}: {name} holds pickled objects beyond tensors and plain values; "
                    f"refusing to load it (loading it would run code from the file): {type(e).__name__}"
                ) from e
