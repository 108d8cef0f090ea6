"""TableSpec: one embedding table of a :class:`~torchrec_rankmixer.models.spec.ModelSpec`
(the fields of TorchRec's table configs that shape it)."""

import functools
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType

from torchrec_rankmixer.utils.checks import check_choice, check_float, check_positive_int


@dataclass(frozen=True)
class TableSpec:
    """One embedding table (the fields of TorchRec's table configs that shape it).

    Example::

        >>> TableSpec("t", 8, 100, ("a", "b")).to_config().num_embeddings
        100
    """

    name: str
    embedding_dim: int
    num_embeddings: int
    feature_names: Tuple[str, ...]
    pooling: str = "SUM"
    init_std: Optional[float] = None

    def __post_init__(self) -> None:
        for key in ("embedding_dim", "num_embeddings"):
            check_positive_int(f"table {self.name!r}: {key}", getattr(self, key))
        if self.init_std is not None:
            check_float(f"table {self.name!r}: init_std", self.init_std, 0.0, float("inf"), "()")
        if isinstance(self.feature_names, str) or len(self.feature_names) == 0:
            raise ValueError(
                f"table {self.name!r}: feature_names ({self.feature_names!r}) must be a "
                "non-empty list of names"
            )
        check_choice(f"table {self.name!r}: pooling", self.pooling, list(PoolingType.__members__))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))

    def _init_fn(self) -> Any:
        """normal(0, init_std) for ``init_std``; None keeps TorchRec's uniform(+-sqrt(1/rows))."""
        return None if self.init_std is None else functools.partial(torch.nn.init.normal_, mean=0.0, std=self.init_std)

    def to_config(self) -> EmbeddingBagConfig:
        """The ``EmbeddingBagConfig`` (a pooled table of the EBC)."""
        return EmbeddingBagConfig(
            name=self.name, embedding_dim=self.embedding_dim, num_embeddings=self.num_embeddings,
            feature_names=list(self.feature_names), pooling=PoolingType[self.pooling], init_fn=self._init_fn(),
        )

    def to_sequence_config(self) -> EmbeddingConfig:
        """The ``EmbeddingConfig`` (an unpooled table of the sequence EmbeddingCollection)."""
        return EmbeddingConfig(
            name=self.name, embedding_dim=self.embedding_dim, num_embeddings=self.num_embeddings,
            feature_names=list(self.feature_names), init_fn=self._init_fn(),
        )

    @classmethod
    def from_config(cls, config: Any) -> "TableSpec":
        """From an ``EmbeddingBagConfig`` or an ``EmbeddingConfig`` (a normal init_fn made by
        :meth:`to_config` is read back as ``init_std``)."""
        pooling = getattr(config, "pooling", PoolingType.SUM)
        fn = getattr(config, "init_fn", None)
        std = None
        if isinstance(fn, functools.partial) and fn.func is torch.nn.init.normal_:
            std = float(fn.keywords["std"])
        return cls(config.name, config.embedding_dim, config.num_embeddings,
                   tuple(config.feature_names), pooling.name, std)


def table_specs(configs: Sequence[Any]) -> Tuple[TableSpec, ...]:
    """The :class:`TableSpec` of each TorchRec table config (EBC or EC), in order.

    Example::

        >>> table_specs([TableSpec("t", 8, 100, ("a",)).to_config()])[0].num_embeddings
        100
    """
    return tuple(TableSpec.from_config(c) for c in configs)
