"""The validation helpers every settings object and constructor uses (pure Python).

Each raises ``ValueError`` whose message starts with the name it was given and the bad
value, e.g. ``model.dropout (1.5) must be in [0, 1)``. Pass the name the user wrote
(a constructor argument, or a dotted setting such as ``optim.lr``).

Example::

    >>> check_positive_int("d_model", 64)
    >>> check_choice("pooling", "max", ("mean", "flatten"))
    Traceback (most recent call last):
    ...
    ValueError: pooling ('max') must be one of ['mean', 'flatten']
"""

from typing import Iterable, Mapping, Sequence

INTERVALS = ("()", "(]", "[)", "[]")


def check_positive_int(name: str, value: object) -> None:
    """``value`` is an int >= 1 (bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} ({value!r}) must be a positive int")


def check_positive_ints(values: Mapping[str, object]) -> None:
    """Every ``name: value`` of ``values`` is an int >= 1, checked in order.

    Example::

        >>> check_positive_ints({"num_tokens": 4, "d_model": 0})
        Traceback (most recent call last):
        ...
        ValueError: d_model (0) must be a positive int
    """
    for name, value in values.items():
        check_positive_int(name, value)


def check_non_negative_int(name: str, value: object) -> None:
    """``value`` is an int >= 0 (bool is refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} ({value!r}) must be an int >= 0")


def check_bool(name: str, value: object) -> None:
    """``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} ({value!r}) must be a bool")


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    options = list(choices)
    if value not in options:
        raise ValueError(f"{name} ({value!r}) must be one of {options}")


def check_float(name: str, value: object, low: float, high: float, closed: str = "[]") -> None:
    """``value`` is a real number in the interval ``closed`` gives: ``"()"``, ``"(]"``,
    ``"[)"`` or ``"[]"`` around ``low``, ``high`` (``float("inf")`` for no bound).

    Example::

        >>> check_float("dropout", 1.0, 0.0, 1.0, "[)")
        Traceback (most recent call last):
        ...
        ValueError: dropout (1.0) must be in [0, 1)
    """
    if closed not in INTERVALS:
        raise ValueError(f"closed ({closed!r}) must be one of {list(INTERVALS)}")  # programming error
    interval = f"{closed[0]}{low:g}, {high:g}{closed[1]}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} ({value!r}) must be a number in {interval}")
    v = float(value)
    above = v >= low if closed[0] == "[" else v > low
    below = v <= high if closed[1] == "]" else v < high
    if not (above and below):
        raise ValueError(f"{name} ({value!r}) must be in {interval}")


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} ({value!r}) must be a number")
    return float(value)


def check_positive(name: str, value: object) -> None:
    """``value`` is a real number > 0."""
    if not _check_number(name, value) > 0:
        raise ValueError(f"{name} ({value!r}) must be > 0")


def check_non_negative(name: str, value: object) -> None:
    """``value`` is a real number >= 0."""
    if not _check_number(name, value) >= 0:
        raise ValueError(f"{name} ({value!r}) must be >= 0")


def check_layer_sizes(name: str, sizes: object, min_len: int = 1) -> None:
    """``sizes`` is a list of at least ``min_len`` positive ints (MLP widths).

    Example::

        >>> check_layer_sizes("over_arch_layer_sizes", [8, 0])
        Traceback (most recent call last):
        ...
        ValueError: over_arch_layer_sizes ([8, 0]) must hold positive ints; entry 1 is 0
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(f"{name} ({sizes!r}) must be a list of positive ints")
    for i, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"{name} ({list(sizes)}) must hold positive ints; entry {i} is {s!r}")
    if len(sizes) < min_len:
        raise ValueError(f"{name} ({list(sizes)}) needs at least {min_len} size(s)")
