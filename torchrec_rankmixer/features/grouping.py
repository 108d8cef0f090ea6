"""Resolve how embedded features become tokens: a column-index plan, pure Python.

Three modes (see docs/architecture.md):

- ``"groups"``: explicit named semantic groups; one token per group, its features'
  embeddings concatenated in the order listed.
- ``"auto"``: no groups given; features in KeyedTensor order (the order of the
  EmbeddingBagCollection's tables, then each table's ``feature_names``) are cut into T
  contiguous groups whose sizes differ by at most one (larger groups first).
- ``"split"``: the paper's Eq. 2; the embeddings of all groups (or all features) are
  concatenated into one vector of width W, which is split into T contiguous chunks whose
  widths differ by at most one; each chunk is projected to D.

The result is a :class:`TokenPlan`: for each token, the list of columns it reads in the
concatenated [B, sum(dims)] embedding matrix.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

MODES: Tuple[str, ...] = ("groups", "auto", "split")


@dataclass(frozen=True)
class TokenPlan:
    """Which embedding columns feed each sparse token.

    Attributes:
        names: one name per token (group name, ``"auto_<i>"`` or ``"chunk_<i>"``).
        columns: per token, column indices into the concatenated embedding matrix.
        features: per token, the feature names it covers (for docs and debugging).
        mode: the mode that built it (``"groups"``, ``"auto"`` or ``"split"``).
    """

    names: Tuple[str, ...]
    columns: Tuple[Tuple[int, ...], ...]
    features: Tuple[Tuple[str, ...], ...]
    mode: str

    @property
    def widths(self) -> Tuple[int, ...]:
        return tuple(len(c) for c in self.columns)


def _split_sizes(n: int, parts: int) -> List[int]:
    base, extra = divmod(n, parts)
    return [base + 1 if i < extra else base for i in range(parts)]


def _feature_columns(feature_dims: Mapping[str, int]) -> Dict[str, List[int]]:
    cols: Dict[str, List[int]] = {}
    start = 0
    for name, dim in feature_dims.items():
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"embedding dim of feature {name!r} ({dim!r}) must be a positive int")
        cols[name] = list(range(start, start + dim))
        start += dim
    return cols


def _validate_groups(
    groups: Mapping[str, Sequence[str]], feature_dims: Mapping[str, int]
) -> None:
    if len(groups) == 0:
        raise ValueError("groups is empty: give at least one group or use mode='auto'")
    owner: Dict[str, str] = {}
    for gname, members in groups.items():
        if isinstance(members, str):
            raise ValueError(f"group {gname!r} must be a list of feature names, got a string")
        if len(members) == 0:
            raise ValueError(f"group {gname!r} is empty")
        for f in members:
            if f not in feature_dims:
                raise ValueError(
                    f"group {gname!r} names unknown feature {f!r}; known: {sorted(feature_dims)}"
                )
            if f in owner:
                raise ValueError(f"feature {f!r} is in two groups: {owner[f]!r} and {gname!r}")
            owner[f] = gname
    unused = [f for f in feature_dims if f not in owner]
    if unused:
        raise ValueError(
            f"features {unused} are embedded but in no group; add them to a group "
            "(or remove them from the EmbeddingBagCollection)"
        )


def resolve_mode(groups: Optional[Mapping[str, Sequence[str]]], mode: Optional[str]) -> str:
    """The tokenization mode: ``mode`` when given, else ``"groups"`` when groups are
    given, else ``"auto"``.

    Example::

        >>> resolve_mode({"u": ["a"]}, None), resolve_mode(None, None), resolve_mode(None, "split")
        ('groups', 'auto', 'split')
    """
    return mode if mode is not None else ("groups" if groups else "auto")


def plan_tokens(
    feature_dims: Mapping[str, int],
    num_tokens: Optional[int],
    groups: Optional[Mapping[str, Sequence[str]]] = None,
    mode: Optional[str] = None,
) -> TokenPlan:
    """Build the :class:`TokenPlan`.

    Args:
        feature_dims: ordered feature name -> embedding dim, in KeyedTensor order.
        num_tokens: sparse tokens T_s. Required for ``"auto"``/``"split"``; for
            ``"groups"`` it defaults to (and must equal) ``len(groups)``.
        groups: group name -> feature names (``"groups"`` and optionally ``"split"``).
        mode: ``"groups"``, ``"auto"`` or ``"split"``; default ``"groups"`` when groups
            are given, else ``"auto"``.

    Example::

        >>> plan = plan_tokens({"a": 2, "b": 2, "c": 4}, num_tokens=2)
        >>> plan.features
        (('a', 'b'), ('c',))
        >>> plan_tokens({"a": 2, "b": 2, "c": 4}, 4, mode="split").widths
        (2, 2, 2, 2)
    """
    if len(feature_dims) == 0:
        raise ValueError("no sparse features: the EmbeddingBagCollection has no feature names")
    mode = resolve_mode(groups, mode)
    if mode not in MODES:
        raise ValueError(f"tokenization mode ({mode!r}) must be one of {list(MODES)}")
    if num_tokens is not None and (not isinstance(num_tokens, int) or num_tokens < 1):
        raise ValueError(f"num_tokens ({num_tokens!r}) must be a positive int")
    cols = _feature_columns(feature_dims)
    names = list(feature_dims)

    if mode == "groups":
        if not groups:
            raise ValueError("mode='groups' needs groups (a mapping of group name -> features)")
        _validate_groups(groups, feature_dims)
        if num_tokens is not None and num_tokens != len(groups):
            raise ValueError(
                f"num_tokens ({num_tokens}) must equal the number of groups ({len(groups)})"
            )
        return TokenPlan(
            names=tuple(groups),
            columns=tuple(tuple(c for f in m for c in cols[f]) for m in groups.values()),
            features=tuple(tuple(m) for m in groups.values()),
            mode=mode,
        )

    if num_tokens is None:
        raise ValueError(f"mode={mode!r} needs num_tokens")

    if mode == "auto":
        if groups:
            raise ValueError("mode='auto' takes no groups; use mode='groups' or mode='split'")
        if num_tokens > len(names):
            raise ValueError(
                f"num_tokens ({num_tokens}) is larger than the number of features "
                f"({len(names)}); auto grouping needs at least one feature per token"
            )
        out_f, start = [], 0
        for size in _split_sizes(len(names), num_tokens):
            out_f.append(tuple(names[start : start + size]))
            start += size
        return TokenPlan(
            names=tuple(f"auto_{i}" for i in range(num_tokens)),
            columns=tuple(tuple(c for f in fs for c in cols[f]) for fs in out_f),
            features=tuple(out_f),
            mode=mode,
        )

    # mode == "split" (Eq. 2)
    if groups:
        _validate_groups(groups, feature_dims)
        order = [f for m in groups.values() for f in m]
    else:
        order = names
    flat = [c for f in order for c in cols[f]]
    owners = [f for f in order for _ in cols[f]]
    if num_tokens > len(flat):
        raise ValueError(
            f"num_tokens ({num_tokens}) is larger than the concatenated embedding width "
            f"({len(flat)}); Eq. 2 split needs at least one column per token"
        )
    chunks, chunk_f, start = [], [], 0
    for size in _split_sizes(len(flat), num_tokens):
        chunks.append(tuple(flat[start : start + size]))
        chunk_f.append(tuple(dict.fromkeys(owners[start : start + size])))
        start += size
    return TokenPlan(
        names=tuple(f"chunk_{i}" for i in range(num_tokens)),
        columns=tuple(chunks),
        features=tuple(chunk_f),
        mode=mode,
    )
