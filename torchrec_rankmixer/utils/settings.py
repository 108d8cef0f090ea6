"""Generic loading of nested settings dataclasses from dicts, files and ``key=value`` overrides.

Every section is a dataclass whose fields have simple annotations (int, float, bool, str,
Optional[...], List[...], Dict[str, ...] or another section). Unknown keys and values of
the wrong type raise ``ValueError`` naming the dotted key, e.g. ``model.d_model``.
"""

import dataclasses
import json
import os
import typing
from typing import Any, Dict, List, Sequence, Type, TypeVar

import yaml

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{key} ({value!r}) must be a mapping of settings")
        return from_dict(tp, value, prefix=key)
    if origin in (list, List, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} ({value!r}) must be a list of {_type_name(args[0])}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ValueError(f"{key} ({value!r}) must be a mapping")
        return {str(k): _coerce(f"{key}.{k}", v, args[1]) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} ({value!r}) must be a bool (true/false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} ({value!r}) must be an int")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} ({value!r}) must be a number")
        return float(value)
    if tp is str:
        if value is None:  # "none" on the command line parses as null; str settings mean "none"
            return "none"
        if not isinstance(value, str):
            raise ValueError(f"{key} ({value!r}) must be a string")
        return value
    raise TypeError(f"unsupported settings annotation {tp} for {key}")  # programming error


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults.

    Args:
        cls: a settings dataclass.
        data: nested mapping of values.
        prefix: dotted path of ``cls`` inside the root (for error messages).

    Example::

        >>> @dataclasses.dataclass
        ... class S:
        ...     lr: float = 0.1
        >>> from_dict(S, {"lr": 1}).lr
        1.0
        >>> from_dict(S, {"lrr": 1})
        Traceback (most recent call last):
        ...
        ValueError: unknown setting 'lrr'; known settings here: ['lr']
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ValueError(f"unknown setting {dotted!r}; known settings here: {names}")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def to_dict(obj: Any) -> Dict[str, Any]:
    """Nested plain-dict form of a settings dataclass (JSON/YAML serialisable)."""
    return dataclasses.asdict(obj)


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML: ``64`` -> int, ``1e-3`` -> float,
    ``true`` -> bool, ``[1, 2]`` -> list, ``none``/``null`` -> None, else the string."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value) if any(c.isdigit() for c in value) else value
        except ValueError:
            return value
    return value


def apply_override(data: Dict[str, Any], assignment: str) -> None:
    """Apply ``"a.b.c=value"`` to nested dict ``data`` in place.

    Example::

        >>> d = {}
        >>> apply_override(d, "model.d_model=64"); d
        {'model': {'d_model': 64}}
    """
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like section.key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override key {key!r} is not a dotted setting name")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parse_value(text)


EXTENDS_KEY = "extends"


def merge_settings(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, any other value replaces.

    Example::

        >>> merge_settings({"optim": {"lr": 0.1, "dense": "adam"}}, {"optim": {"lr": 0.2}})
        {'optim': {'lr': 0.2, 'dense': 'adam'}}
    """
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


def load_file(path: str, _chain: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) settings file into a dict.

    A top-level ``extends: base.yaml`` (or a list of files, later ones winning) names
    files, relative to this one, whose settings this file's own are merged over
    (:func:`merge_settings`); so a family of configs states what they share once.
    """
    if not os.path.isfile(path):
        where = f" (extended by {_chain[-1]!r})" if _chain else ""
        raise ValueError(f"config file {path!r}{where} does not exist")
    real = os.path.realpath(path)
    if real in _chain:
        raise ValueError(f"config file {path!r} extends itself (through {list(_chain)})")
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path!r} is not valid: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of sections")
    parents = data.pop(EXTENDS_KEY, [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ValueError(f"config file {path!r}: {EXTENDS_KEY} ({parents!r}) must be a file name or a list of them")
    merged: Dict[str, Any] = {}
    for parent in parents:
        parent_path = os.path.join(os.path.dirname(path), parent)
        merged = merge_settings(merged, load_file(parent_path, (*_chain, real)))
    return merge_settings(merged, data)
