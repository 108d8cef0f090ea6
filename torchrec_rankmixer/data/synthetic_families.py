"""Two synthetic click families that mirror real interaction structure (issue 12).

Both describe users and items as *entities* with several fields each: an id field and
attribute fields (age, region, segment; category, brand, price) that are fixed per
entity and observed with noise (``attribute_noise``: the observed value is a random one
with that probability). Entity ids are Zipf-popular (``zipf_exponent``), so popular
users and items recur while the tail is seen rarely and must be learnt through the
attributes. The dense input is a constant column of ones: no dense signal.

- :class:`LatentAffinityData` (family "affinity"): the label is user x item affinity
  through latent factors, ``<p_u, q_i>``, where each entity's factor is the sum of an
  id part and one part per attribute value, plus per-entity biases.
- :class:`ContextRuleData` (family "context_rules"): adds three context fields (hour,
  weekday, device), a three-way user x item x context term, and sharp rules: the sign
  of the user-item affinity flips for some (item category, daypart) cells, and some
  (category, weekday) cells add a large constant.

Both have the interface of :class:`~torchrec_rankmixer.data.synthetic.SyntheticClickData`:
``batch(B, index)`` is a pure function of ``(seed, index)``, ``table_configs(dim)`` gives
one table per feature, ``true_logits(dense, ids)`` is the planted logit, and
:func:`oracle_auc` scores the true probabilities on any range of batches.
"""

from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import torch
from torchrec.datasets.utils import Batch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.utils.checks import check_float, check_non_negative_int
from torchrec_rankmixer.utils.metrics import binary_auc

USER_ATTRIBUTES: Dict[str, int] = {"user_age": 8, "user_region": 50, "user_segment": 20}
ITEM_ATTRIBUTES: Dict[str, int] = {"item_category": 20, "item_brand": 100, "item_price": 10}
CONTEXT_FIELDS: Dict[str, int] = {"hour": 24, "weekday": 7, "device": 5}


def _check_int(name: str, value: object, low: int) -> None:
    check_non_negative_int(name, value)
    if value < low:  # type: ignore[operator]
        raise ValueError(f"{name} ({value!r}) must be an int >= {low}")


def _check_float(name: str, value: object, low: float, high: float) -> None:
    check_float(name, value, low, high, "[]")


def _zipf_probs(n: int, exponent: float) -> torch.Tensor:
    p = 1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** exponent
    return (p / p.sum()).float()


@dataclass(frozen=True)
class _EntityData:
    """Shared machinery: entities with attributes, Zipf draws, batches (not public)."""

    num_users: int = 1000
    num_items: int = 500
    latent_dim: int = 8
    zipf_exponent: float = 1.05
    attribute_noise: float = 0.1
    dense_in_features: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("num_users", self.num_users, 2)
        _check_int("num_items", self.num_items, 2)
        _check_int("latent_dim", self.latent_dim, 1)
        _check_int("dense_in_features", self.dense_in_features, 1)
        _check_int("seed", self.seed, 0)
        _check_float("zipf_exponent", self.zipf_exponent, 0.0, 3.0)
        _check_float("attribute_noise", self.attribute_noise, 0.0, 1.0)
        g = torch.Generator().manual_seed(7919 * self.seed + self._family_salt)
        object.__setattr__(self, "_t", self._draw(g))

    _family_salt = 0

    # ------------------------------------------------------------------ schema
    @property
    def cardinalities(self) -> Dict[str, int]:
        """Feature name -> table rows, in KJT key order."""
        return {"user_id": self.num_users, **USER_ATTRIBUTES,
                "item_id": self.num_items, **ITEM_ATTRIBUTES}

    @property
    def feature_names(self) -> List[str]:
        return list(self.cardinalities)

    def table_configs(self, embedding_dim: int) -> List[EmbeddingBagConfig]:
        """One table per feature, ``t_<feature>``, sized to the feature's cardinality."""
        _check_int("embedding_dim", embedding_dim, 1)
        return [
            EmbeddingBagConfig(name=f"t_{f}", embedding_dim=embedding_dim, num_embeddings=n,
                               feature_names=[f])
            for f, n in self.cardinalities.items()
        ]

    # ------------------------------------------------------------------ model
    def _draw(self, g: torch.Generator) -> Dict[str, torch.Tensor]:
        """Entity attributes, popularity orders and latent factors (drawn once)."""
        U, I, r = self.num_users, self.num_items, self.latent_dim
        t: Dict[str, torch.Tensor] = {
            "user_perm": torch.randperm(U, generator=g),  # popularity rank -> user id
            "item_perm": torch.randperm(I, generator=g),
            "user_attr": torch.stack([torch.randint(n, (U,), generator=g) for n in USER_ATTRIBUTES.values()], 1),
            "item_attr": torch.stack([torch.randint(n, (I,), generator=g) for n in ITEM_ATTRIBUTES.values()], 1),
        }
        # factor = 0.6 * id part + 0.8 * mean of attribute parts; entries ~ N(0, 1/sqrt(r))
        scale = r ** -0.25
        for side, n_ent, attrs in (("user", U, USER_ATTRIBUTES), ("item", I, ITEM_ATTRIBUTES)):
            parts = [torch.randn(n, r, generator=g)[t[f"{side}_attr"][:, j]] for j, n in enumerate(attrs.values())]
            attr_part = torch.stack(parts).sum(0) / len(parts) ** 0.5
            t[f"{side}_factor"] = scale * (0.6 * torch.randn(n_ent, r, generator=g) + 0.8 * attr_part)
            t[f"{side}_bias"] = 0.5 * torch.randn(n_ent, generator=g)
        return t

    def _entity_logit(self, users: torch.Tensor, items: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(biases [B], affinity <p_u, q_i> [B]) for user ids [B] and item ids [B]."""
        t = self._t  # type: ignore[attr-defined]
        affinity = (t["user_factor"][users] * t["item_factor"][items]).sum(1)
        return t["user_bias"][users] + t["item_bias"][items], affinity

    def true_logits(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The planted logit [B] for dense [B, dense_in] and first ids [B, F]."""
        raise NotImplementedError

    # ------------------------------------------------------------------ batches
    def _context_ids(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        return torch.empty(batch_size, 0, dtype=torch.long)

    def sample(self, batch_size: int, index: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw arrays for batch ``index``: dense [B, dense], ids [B, F, 1], labels [B]."""
        _check_int("batch_size", batch_size, 1)
        _check_int("index", index, 0)
        t = self._t  # type: ignore[attr-defined]
        g = torch.Generator().manual_seed((self.seed + 1) * 1_000_003 + index + self._family_salt)
        B = batch_size
        users = t["user_perm"][torch.multinomial(_zipf_probs(self.num_users, self.zipf_exponent), B, True, generator=g)]
        items = t["item_perm"][torch.multinomial(_zipf_probs(self.num_items, self.zipf_exponent), B, True, generator=g)]
        observed = []
        for attr, cards in ((t["user_attr"][users], USER_ATTRIBUTES), (t["item_attr"][items], ITEM_ATTRIBUTES)):
            noise = torch.rand(attr.shape, generator=g) < self.attribute_noise
            rand = torch.stack([torch.randint(n, (B,), generator=g) for n in cards.values()], 1)
            observed.append(torch.where(noise, rand, attr))  # (B, 3)
        ids = torch.cat([users[:, None], observed[0], items[:, None], observed[1],
                         self._context_ids(B, g)], dim=1)  # (B, F)
        dense = torch.ones(B, self.dense_in_features)
        p = torch.sigmoid(self.true_logits(dense, ids))
        labels = (torch.rand(B, generator=g) < p).float()
        return dense, ids.unsqueeze(2), labels

    def batch(self, batch_size: int, index: int) -> Batch:
        """Batch ``index`` as a TorchRec ``Batch`` (dense, KJT with one id per feature, labels)."""
        dense, ids, labels = self.sample(batch_size, index)
        B, F, _ = ids.shape
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.feature_names, values=ids[:, :, 0].t().reshape(-1),  # feature-major
            lengths=torch.ones(F * B, dtype=torch.int32),
        )
        return Batch(dense_features=dense, sparse_features=kjt, labels=labels)

    def batches(self, batch_size: int, num_batches: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. start + num_batches - 1``."""
        for i in range(start, start + num_batches):
            yield self.batch(batch_size, i)


@dataclass(frozen=True)
class LatentAffinityData(_EntityData):
    """User x item affinity through latent factors (family "affinity").

    Fields (one table each): ``user_id, user_age, user_region, user_segment, item_id,
    item_category, item_brand, item_price``. Label model::

        p_u = r^-1/4 (0.6 P[u] + 0.8 sum_j A_j[attr_j(u)] / sqrt(3))     (same for q_i)
        logit = -0.7 + b_u + b_i + affinity_scale * <p_u, q_i>

    Args:
        num_users: user ids (Zipf-popular), >= 2.
        num_items: item ids (Zipf-popular), >= 2.
        latent_dim: r, the rank of the affinity.
        zipf_exponent: popularity exponent s (P(rank k) ~ 1/k^s), in [0, 3].
        attribute_noise: probability that an observed attribute is random, in [0, 1].
        dense_in_features: width of the constant dense input (ones), >= 1.
        seed: fixes the label model and every batch.
        affinity_scale: multiplier of ``<p_u, q_i>``, >= 0.

    Shapes:
        ``batch(B, i)``: dense [B, dense_in_features], KJT with 8 keys and stride B,
        labels [B].

    Example::

        >>> data = LatentAffinityData(num_users=100, num_items=50)
        >>> b = data.batch(batch_size=16, index=3)
        >>> b.dense_features.shape, len(b.sparse_features.keys()), b.labels.shape
        (torch.Size([16, 1]), 8, torch.Size([16]))
        >>> torch.equal(b.labels, data.batch(16, 3).labels)
        True
    """

    affinity_scale: float = 2.0
    _family_salt = 11

    def __post_init__(self) -> None:
        _check_float("affinity_scale", self.affinity_scale, 0.0, 100.0)
        super().__post_init__()

    def true_logits(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The planted logit [B] for dense [B, dense_in] (unused) and ids [B, 8]."""
        bias, affinity = self._entity_logit(ids[:, 0], ids[:, 4])
        return -0.7 + bias + self.affinity_scale * affinity


@dataclass(frozen=True)
class ContextRuleData(_EntityData):
    """User x item x context effects with sharp conditional rules (family "context_rules").

    Fields: the 8 user/item fields of :class:`LatentAffinityData`, then ``hour`` (24),
    ``weekday`` (7), ``device`` (5), drawn uniformly. Label model, with ``c`` the item's
    true category and daypart = hour // 6::

        logit = -0.7 + b_u + b_i
              + affinity_scale * flip[c, daypart] * <p_u, q_i>     (flip in {+1, -1})
              + three_way_scale * sum_k p_u,k q_i,k z_k            (z = H[hour] + W[weekday] + V[device])
              + rule_strength * rule[c, weekday]                   (rule in {-1, 0, +1}, 1/5 nonzero)

    Args:
        num_users: user ids (Zipf-popular), >= 2.
        num_items: item ids (Zipf-popular), >= 2.
        latent_dim: r, the rank of the affinity and of the three-way term.
        zipf_exponent: popularity exponent s, in [0, 3].
        attribute_noise: probability that an observed attribute is random, in [0, 1].
        dense_in_features: width of the constant dense input (ones), >= 1.
        seed: fixes the label model and every batch.
        affinity_scale: multiplier of the (possibly flipped) affinity, >= 0.
        three_way_scale: multiplier of the user x item x context term, >= 0.
        rule_strength: size of the (category, weekday) rule offsets, >= 0.
        flip_fraction: share of (category, daypart) cells whose affinity sign flips, in [0, 1].

    Shapes:
        ``batch(B, i)``: dense [B, dense_in_features], KJT with 11 keys and stride B,
        labels [B].

    Example::

        >>> data = ContextRuleData(num_users=100, num_items=50)
        >>> b = data.batch(batch_size=16, index=0)
        >>> b.sparse_features.keys()[-3:], b.labels.shape
        (['hour', 'weekday', 'device'], torch.Size([16]))
        >>> 0.5 < oracle_auc(data, 1024, 2) <= 1.0
        True
    """

    affinity_scale: float = 1.5
    three_way_scale: float = 1.5
    rule_strength: float = 2.0
    flip_fraction: float = 0.3
    _family_salt = 23

    def __post_init__(self) -> None:
        for name in ("affinity_scale", "three_way_scale", "rule_strength"):
            _check_float(name, getattr(self, name), 0.0, 100.0)
        _check_float("flip_fraction", self.flip_fraction, 0.0, 1.0)
        super().__post_init__()

    @property
    def cardinalities(self) -> Dict[str, int]:
        return {**super().cardinalities, **CONTEXT_FIELDS}

    def _draw(self, g: torch.Generator) -> Dict[str, torch.Tensor]:
        t = super()._draw(g)
        r, n_cat = self.latent_dim, ITEM_ATTRIBUTES["item_category"]
        t["flip"] = torch.where(torch.rand(n_cat, 4, generator=g) < self.flip_fraction, -1.0, 1.0)
        t["rule"] = (torch.rand(n_cat, 7, generator=g) < 0.2).float() * torch.sign(torch.randn(n_cat, 7, generator=g))
        for name, n in CONTEXT_FIELDS.items():
            t[f"ctx_{name}"] = 0.6 * torch.randn(n, r, generator=g)
        return t

    def _context_ids(self, batch_size: int, g: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(n, (batch_size,), generator=g) for n in CONTEXT_FIELDS.values()], 1)

    def true_logits(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The planted logit [B] for dense [B, dense_in] (unused) and ids [B, 11]."""
        t = self._t  # type: ignore[attr-defined]
        users, items, hour, weekday, device = ids[:, 0], ids[:, 4], ids[:, 8], ids[:, 9], ids[:, 10]
        category = t["item_attr"][items, 0]  # the item's true category, not the noisy one
        bias, affinity = self._entity_logit(users, items)
        z = t["ctx_hour"][hour] + t["ctx_weekday"][weekday] + t["ctx_device"][device]  # (B, r)
        three_way = (t["user_factor"][users] * t["item_factor"][items] * z).sum(1)
        logit = -0.7 + bias + self.affinity_scale * t["flip"][category, hour // 6] * affinity
        return logit + self.three_way_scale * three_way + self.rule_strength * t["rule"][category, weekday]


def oracle_auc(data: object, batch_size: int, num_batches: int, start: int = 0) -> float:
    """AUC of the true logits on batches ``start ..`` of ``data`` (any synthetic family,
    :class:`SyntheticClickData` included): the best AUC any model can expect there.

    Example::

        >>> round(oracle_auc(LatentAffinityData(num_users=100, num_items=50), 512, 2), 2) > 0.6
        True
    """
    _check_int("num_batches", num_batches, 1)
    logits, labels = [], []
    for i in range(start, start + num_batches):
        dense, ids, y = data.sample(batch_size, i)  # type: ignore[attr-defined]
        logits.append(data.true_logits(dense, ids[:, :, 0]))  # type: ignore[attr-defined]
        labels.append(y if y.dim() == 1 else y[:, 0])
    return binary_auc(torch.cat(logits), torch.cat(labels))
