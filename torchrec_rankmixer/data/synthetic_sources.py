"""Synthetic batch sources for ``rankmixer-train`` (``data.format`` ``synthetic``,
``synthetic_sequences``, ``synthetic_affinity``, ``synthetic_context_rules``): batches are a
pure function of the global batch index, so the cursor is the whole data position."""

from dataclasses import asdict
from typing import Dict, Iterator, List, Optional, Tuple

from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig

from torchrec_rankmixer.data.settings import DataSettings
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET, TEST_OFFSET, SyntheticClickData
from torchrec_rankmixer.data.synthetic_families import ContextRuleData, LatentAffinityData
from torchrec_rankmixer.data.synthetic_sequences import SyntheticSequenceData
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.utils.checks import check_choice

SPLITS: Tuple[str, ...] = ("valid", "test")  # the held-out sets: data.eval_* and data.test_*


class SyntheticSource:
    """Synthetic batches addressed by a global batch cursor.

    Rank ``r`` of ``W`` reads global batches ``cursor + r, cursor + W + r, ...``, so the
    cursor (batches consumed by all ranks) is the whole data position: resuming on another
    number of ranks continues where the run stopped.

    Args:
        data: the ``data`` settings (``data.synthetic.*``, batch sizes).
        two_labels: add the conversion label (ESMM: labels [B, 2]).

    Example::

        >>> src = SyntheticSource(DataSettings(batch_size=4))
        >>> [b.labels.shape for b in src.train_batches(cursor=0, rank=1, world_size=2, num=2)]
        [torch.Size([4]), torch.Size([4])]
    """

    has_sequences = False

    def __init__(self, data: DataSettings, two_labels: bool = False) -> None:
        s = data.synthetic
        self.data: "SyntheticClickData | SyntheticSequenceData" = SyntheticClickData(
            num_sparse_features=s.num_sparse_features,
            num_embeddings=s.num_embeddings,
            dense_in_features=s.dense_in_features,
            num_interactions=s.num_interactions,
            ids_per_feature=s.ids_per_feature,
            seed=s.seed,
            conversion_label=two_labels,
        )
        self.batch_size, self.eval_batch_size = data.batch_size, data.eval_batch_size
        self.eval_batches, self.test_batches = data.eval_batches, data.test_batches
        self.user_feature: Optional[str] = data.user_column or self.data.feature_names[0]

    @property
    def dense_in_features(self) -> int:
        return self.data.dense_in_features

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        return self.data.table_configs(embedding_dim)

    def train_batches(self, cursor: int, rank: int, world_size: int, num: int) -> Iterator[Batch]:
        """``num`` batches of this rank starting at global batch ``cursor``."""
        for i in range(num):
            yield self.data.batch(self.batch_size, cursor + i * world_size + rank)

    def eval_batch_iter(self, rank: int, world_size: int, split: str = "valid") -> Iterator[Batch]:
        """This rank's share of a held-out set, ``split`` ``"valid"`` (``data.eval_batches``
        batches from ``EVAL_OFFSET``) or ``"test"`` (``data.test_batches`` from
        ``TEST_OFFSET``): ``ceil(n / W)`` batches on every rank (equal counts keep the
        sharded collectives in step)."""
        check_choice("split", split, SPLITS)
        count, offset = (self.eval_batches, EVAL_OFFSET) if split == "valid" else (self.test_batches, TEST_OFFSET)
        per_rank = -(-count // world_size)
        for j in range(per_rank):
            yield self.data.batch(self.eval_batch_size, offset + j * world_size + rank)

    def malformed_report(self) -> Dict[str, int]:
        return {}

    def close(self) -> None:
        """Nothing runs in the background here."""


class SyntheticSequenceSource(SyntheticSource):
    """``data.format=synthetic_sequences``: :class:`SyntheticSource` batches plus a
    candidate ``item`` and a behaviour sequence ``hist_item`` (one shared item table, for
    the model's sequence EmbeddingCollection; data/synthetic_sequences.py).

    Args:
        data: the ``data`` settings (``data.synthetic.*`` for the base features,
            ``data.sequences.*`` for the items and histories).
        two_labels: must be False (the sequence data has one label).

    Example::

        >>> src = SyntheticSequenceSource(DataSettings(format="synthetic_sequences", batch_size=4))
        >>> [c.name for c in src.sequence_features()], src.sequence_table_configs(8)[0].feature_names
        (['item', 'hist_item'], ['item', 'hist_item'])
    """

    has_sequences = True

    def __init__(self, data: DataSettings, two_labels: bool = False) -> None:
        if two_labels:
            raise ValueError("data.format ('synthetic_sequences') has one label; model.task='esmm' needs two")
        super().__init__(data, False)
        q = data.sequences
        self.data = SyntheticSequenceData(
            base=self.data, num_items=q.num_items, num_categories=q.num_categories,  # type: ignore[arg-type]
            max_history=q.max_history, recent_window=q.recent_window, match_rate=q.match_rate,
            effect=q.effect, seed=q.seed,
        )

    @property
    def dense_in_features(self) -> int:
        return self.data.base.dense_in_features  # type: ignore[union-attr]

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        return self.data.embedding_bag_configs(embedding_dim)  # type: ignore[union-attr]

    def sequence_table_configs(self, embedding_dim: int) -> List[EmbeddingConfig]:
        """The sequence EmbeddingCollection's tables."""
        return self.data.sequence_table_configs(embedding_dim)  # type: ignore[union-attr]

    def sequence_features(self) -> List[SequenceFeatureConfig]:
        """The default pooling (``model.sequence_features`` overrides it): the candidate as a
        sequence of one, the history by target attention over its ``recent_window`` items."""
        return self.data.sequence_feature_configs(max_len=self.data.recent_window)  # type: ignore[union-attr]


class FamilySource(SyntheticSource):
    """``data.format=synthetic_affinity`` / ``synthetic_context_rules``: batches of the
    entity families of data/synthetic_families.py (Zipf-popular users and items with
    attributes; ``data.affinity.*`` / ``data.context_rules.*``), addressed by the global
    batch cursor as :class:`SyntheticSource`'s.

    Args:
        data: the ``data`` settings.
        two_labels: must be False (the families have one label).

    Example::

        >>> src = FamilySource(DataSettings(format="synthetic_context_rules", batch_size=4))
        >>> src.data.feature_names[-3:], src.user_feature
        (['hour', 'weekday', 'device'], 'user_id')
    """

    def __init__(self, data: DataSettings, two_labels: bool = False) -> None:
        if two_labels:
            raise ValueError(f"data.format ({data.format!r}) has one label; model.task='esmm' needs two")
        if data.format == "synthetic_affinity":
            self.data = LatentAffinityData(**asdict(data.affinity))  # type: ignore[assignment]
        else:
            self.data = ContextRuleData(**asdict(data.context_rules))  # type: ignore[assignment]
        self.batch_size, self.eval_batch_size = data.batch_size, data.eval_batch_size
        self.eval_batches, self.test_batches = data.eval_batches, data.test_batches
        self.user_feature = data.user_column or self.data.feature_names[0]
