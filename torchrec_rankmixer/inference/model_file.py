"""A model file: one self-describing file with the full (unsharded) state_dict and the
:class:`ModelSpec`, for moving a trained model to export without its run directory.

(Training's resumable, sharded DCP checkpoints are train/checkpoint.py's; this is a
single file a serving pipeline can take.)

File layout (one ``torch.save`` file, loadable with ``weights_only=True``)::

    {"format": "torchrec_rankmixer.checkpoint", "format_version": 1,
     "package_version": "0.2.0", "spec": ModelSpec.to_dict(), "state_dict": {...}}

From a sharded model (TorchRec ``DistributedModelParallel``), every rank calls
:func:`save_model`; sharded tables (ShardedTensor / DTensor) are gathered to rank 0,
which writes the file.
"""

import os
from typing import Any, Dict, Union

import torch
from torch import nn

from torchrec_rankmixer.models.spec import ModelSpec, unwrap_model
from torchrec_rankmixer.version import __version__

CHECKPOINT_FORMAT = "torchrec_rankmixer.checkpoint"
CHECKPOINT_VERSION = 1


def _full_tensor(value: Any) -> Any:
    """A plain tensor from a Tensor, DTensor or ShardedTensor (collective when sharded)."""
    if type(value).__name__ == "DTensor":
        return value.full_tensor()
    if type(value).__name__ == "ShardedTensor":
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        out = torch.empty(value.size(), dtype=value.dtype) if rank == 0 else None
        value.gather(dst=0, out=out)
        return out
    return value


def full_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded state_dict of a model, on CPU (the model's own keys, DMP unwrapped).

    Under torch.distributed every rank must call it; only rank 0 gets full tables
    (other ranks get ``None`` for sharded entries).

    Example::

        >>> sd = full_state_dict(nn.Linear(2, 3))
        >>> sorted(sd), sd["weight"].shape
        (['bias', 'weight'], torch.Size([3, 2]))
    """
    inner = unwrap_model(model)
    out: Dict[str, torch.Tensor] = {}
    for key, value in inner.state_dict().items():
        full = _full_tensor(value)
        out[key] = full.detach().cpu() if isinstance(full, torch.Tensor) else full
    return out


def save_model(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``model`` (plain or DMP-sharded DLRM_RankMixer) as a model file.

    Args:
        model: the trained model.
        path: the output file (rank 0 writes it under torch.distributed).

    Example::

        >>> import tempfile, os
        >>> from torchrec_rankmixer.models.spec import TableSpec
        >>> spec = ModelSpec(tables=(TableSpec("t", 8, 20, ("a", "b")),), dense_in_features=0,
        ...                  dense_arch_layer_sizes=(), over_arch_layer_sizes=(8, 1),
        ...                  rankmixer_config={"d_model": 16, "num_tokens": 2, "num_layers": 1})
        >>> model = spec.build()
        >>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
        >>> save_model(model, path)
        >>> restored = load_model(path)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
        ...                                       restored.state_dict().values()))
        True
    """
    spec = ModelSpec.from_model(model)
    state = full_state_dict(model)
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "spec": spec.to_dict(),
            "state_dict": state,
        },
        path,
    )


def read_model_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The model file's dict, format-checked (ValueError on anything else).

    Example::

        >>> read_model_file("/nonexistent.pt")
        Traceback (most recent call last):
        ...
        ValueError: model file '/nonexistent.pt' does not exist or is not a file
    """
    if os.path.isdir(path):
        raise ValueError(
            f"model file {str(path)!r} is a directory; for a rankmixer-train run or DCP "
            "checkpoint use export_from_run_dir / rankmixer-export --run-dir"
        )
    if not os.path.isfile(path):
        raise ValueError(f"model file {str(path)!r} does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"cannot read model file {str(path)!r}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a {CHECKPOINT_FORMAT} file (write one with save_model; "
            "for a rankmixer-train run directory use export_from_run_dir)"
        )
    if data.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"model file {str(path)!r}: format_version ({data.get('format_version')!r}) must be "
            f"{CHECKPOINT_VERSION}"
        )
    return data


def load_model(path: Union[str, os.PathLike], validate_inputs: bool = True) -> nn.Module:
    """Rebuild the DLRM_RankMixer of a model file (CPU, eval mode, weights loaded).

    Args:
        path: a file written by :func:`save_model` (example there).
        validate_inputs: passed to the rebuilt model.
    """
    data = read_model_file(path)
    model = ModelSpec.from_dict(data["spec"]).build(validate_inputs=validate_inputs)
    model.load_state_dict(data["state_dict"], strict=True)
    return model.eval()
