"""The baselines RankMixer is compared with, trainable by ``rankmixer-train`` (``model.arch``)
on the same EmbeddingBagCollection, optimiser and budget, so a quality table compares
over-arches only.

- ``"dnn"``: an MLP on [dense, concatenated embeddings] (the BARS "DNN": Linear ->
  BatchNorm -> ReLU -> Dropout per hidden layer).
- ``"dcnv2"``: DCNv2 as BARS/FuxiCTR build it for Frappe: a cross network (full rank, or
  low rank) in parallel with the same MLP, one Linear on their concatenation.
- ``"dlrm"`` / ``"dlrm_dcn"``: TorchRec's own ``DLRM`` (dot interaction) and ``DLRM_DCN``
  (stacked low-rank cross net), exactly as ``torchrec.models.dlrm`` builds them.

Every baseline keeps TorchRec's layout (``sparse_arch.embedding_bag_collection``), so
sharding plans, the trainer and the quantized export treat them as they treat
``DLRM_RankMixer``.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN, SparseArch as TorchRecSparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.features.tokenizer import feature_dims_of
from torchrec_rankmixer.models.dlrm_rankmixer import SparseArch
from torchrec_rankmixer.models.table_spec import table_specs
from torchrec_rankmixer.models.validation import check_model_inputs
from torchrec_rankmixer.modules.deep import INITS, mlp_block, xavier_init_
from torchrec_rankmixer.modules.interaction import DCN_LOW_RANK_DIM, DCN_NUM_LAYERS
from torchrec_rankmixer.utils.checks import (
    check_bool,
    check_choice,
    check_float,
    check_layer_sizes,
    check_non_negative_int,
    check_positive_int,
)

ARCHS: Tuple[str, ...] = ("rankmixer", "dnn", "dcnv2", "dlrm", "dlrm_dcn")
BASELINES: Tuple[str, ...] = ARCHS[1:]

torch.fx.wrap("check_model_inputs")


@dataclass(frozen=True)
class BaselineConfig:
    """What a baseline adds to the swap's own arguments (the over-arch and dense-arch
    sizes, which every arch takes as ``DLRM_DCN`` does); fields an arch does not use are
    ignored.

    Args:
        dropout: dropout after each hidden layer of the MLP, in [0, 1) (``dnn``, ``dcnv2``).
        batch_norm: BatchNorm1d after each hidden Linear (``dnn``, ``dcnv2``).
        cross_layers: cross layers (``dcnv2``, ``dlrm_dcn``).
        cross_low_rank: rank of each cross layer's W = U V (``dlrm_dcn``: None = 512, as
            TorchRec's example; ``dcnv2``: None = full rank, as BARS).
        init: Linear init of ``dnn`` / ``dcnv2``: ``"xavier"`` (normal weights, zero biases;
            FuxiCTR) or ``"torch"`` (PyTorch's default). ``dlrm`` / ``dlrm_dcn`` keep TorchRec's.

    Example::

        >>> BaselineConfig(dropout=0.2).cross_layers
        3
    """

    dropout: float = 0.0
    batch_norm: bool = True
    cross_layers: int = DCN_NUM_LAYERS
    cross_low_rank: Optional[int] = None
    init: str = "xavier"

    def __post_init__(self) -> None:
        check_float("dropout", self.dropout, 0.0, 1.0, "[)")
        check_bool("batch_norm", self.batch_norm)
        check_non_negative_int("cross_layers", self.cross_layers)
        if self.cross_low_rank is not None:
            check_positive_int("cross_low_rank", self.cross_low_rank)
        check_choice("init", self.init, INITS)


class CrossNet(nn.Module):
    """DCNv2 cross layers: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, W_l full rank or
    ``U_l V_l`` of rank r.

    Args:
        width: W, the input width.
        layers: number of cross layers.
        low_rank: r, or None for full-rank W_l [W, W].

    Shapes:
        x0: [B, W] -> [B, W].

    Example::

        >>> CrossNet(6, 2)(torch.randn(3, 6)).shape
        torch.Size([3, 6])
    """

    def __init__(self, width: int, layers: int, low_rank: Optional[int] = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(width, width) if low_rank is None
            else nn.Sequential(nn.Linear(width, low_rank, bias=False), nn.Linear(low_rank, width))
            for _ in range(layers)
        )

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, W)
        return x


class BaselineModel(nn.Module):
    """A baseline over-arch on an EBC, with ``DLRM_RankMixer``'s interface and arguments:
    ``forward(dense, kjt)`` -> logits, its two halves ``embed(kjt)`` and
    ``dense_forward(dense, embedded)`` (which the split artifact exports apart),
    ``feature_names``, ``dense_in_features``, input checks, ``recipe()``. It has no
    compiled dense path (``train.compile`` is for ``DLRM_RankMixer``).

    ``dnn``: the MLP ``over_arch_layer_sizes`` on [dense, concatenated embeddings];
    ``dcnv2``: a cross network on that input in parallel with the MLP's hidden layers, the
    last Linear on their concatenation; ``dlrm`` / ``dlrm_dcn``: TorchRec's ``DLRM`` /
    ``DLRM_DCN`` with these arguments (their dense arch must end in the embedding dim).

    Args:
        arch: one of ``BASELINES``.
        embedding_bag_collection: the EBC (may be on the meta device, for DMP).
        dense_in_features: dense input width (0: none).
        over_arch_layer_sizes: the MLP / over-arch sizes; the last is the number of logits.
        dense_arch_layer_sizes: ``dlrm`` / ``dlrm_dcn``'s dense arch (empty for the others,
            which take the dense values as they are).
        config: the :class:`BaselineConfig`.
        dense_device: device of the dense modules.
        validate_inputs: check every batch (keys, ids, NaN, shapes).

    Shapes:
        dense [B, dense_in_features], KJT (stride B) -> logits [B, over_arch_layer_sizes[-1]].

    Example::

        >>> from torchrec import EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        ...     name="t", embedding_dim=4, num_embeddings=10, feature_names=["a", "b"])])
        >>> model = BaselineModel("dcnv2", ebc, 2, [8, 1])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([1, 2, 3, 4]),
        ...                                           torch.tensor([1, 1, 1, 1]))
        >>> model(torch.rand(2, 2), kjt).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        arch: str,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        over_arch_layer_sizes: Sequence[int],
        dense_arch_layer_sizes: Sequence[int] = (),
        config: BaselineConfig = BaselineConfig(),
        dense_device: Optional[torch.device] = None,
        validate_inputs: bool = True,
    ) -> None:
        super().__init__()
        check_choice("arch", arch, BASELINES)
        check_non_negative_int("dense_in_features", dense_in_features)
        check_layer_sizes("over_arch_layer_sizes", over_arch_layer_sizes)
        check_layer_sizes("dense_arch_layer_sizes", dense_arch_layer_sizes, min_len=0)
        dims = feature_dims_of(embedding_bag_collection)
        if not dims:
            raise ValueError("embedding_bag_collection has no tables (no sparse features)")
        torchrec_arch = arch in ("dlrm", "dlrm_dcn")
        if not torchrec_arch and dense_arch_layer_sizes:
            raise ValueError(f"dense_arch_layer_sizes ({list(dense_arch_layer_sizes)}) are for 'dlrm' / "
                             f"'dlrm_dcn'; {arch!r} takes the dense values as they are")
        if torchrec_arch and len(set(dims.values())) > 1:
            raise ValueError(f"arch {arch!r} needs one embedding dim for every feature; got {dims}")
        emb_dim = next(iter(dims.values()))
        if torchrec_arch and list(dense_arch_layer_sizes)[-1:] != [emb_dim]:
            raise ValueError(f"dense_arch_layer_sizes ({list(dense_arch_layer_sizes)}) must end in the "
                             f"embedding dim ({emb_dim}) for arch {arch!r}, as TorchRec's DLRM requires")
        self.arch, self.config, self.dense_in_features = arch, config, dense_in_features
        self._num_features, self._emb_dim = len(dims), emb_dim  # dlrm/dlrm_dcn: embedded -> (B, F, D)
        self.validate_inputs = validate_inputs
        self.feature_names: List[str] = list(dims)
        configs = embedding_bag_collection.embedding_bag_configs()
        self.num_embeddings: List[int] = [c.num_embeddings for c in configs for _ in c.feature_names]
        over, dense_sizes = list(over_arch_layer_sizes), list(dense_arch_layer_sizes)
        if torchrec_arch:
            common = dict(embedding_bag_collection=embedding_bag_collection, dense_in_features=dense_in_features,
                          dense_arch_layer_sizes=dense_sizes, over_arch_layer_sizes=over, dense_device=dense_device)
            torchrec_model = (DLRM(**common) if arch == "dlrm" else  # type: ignore[arg-type]
                              DLRM_DCN(**common, dcn_num_layers=config.cross_layers,  # type: ignore[arg-type]
                                       dcn_low_rank_dim=config.cross_low_rank or DCN_LOW_RANK_DIM))
            # TorchRec's own modules, under its own names (sparse_arch, dense_arch, ...)
            for name in ("sparse_arch", "dense_arch", "inter_arch", "over_arch"):
                setattr(self, name, getattr(torchrec_model, name))
        else:
            width = dense_in_features + sum(dims.values())
            self.sparse_arch = SparseArch(embedding_bag_collection)
            self.mlp = mlp_block(width, over[:-1], config.dropout, config.batch_norm).to(dense_device)
            out_width = over[-2] if len(over) > 1 else width
            if arch == "dcnv2":
                self.cross = CrossNet(width, config.cross_layers, config.cross_low_rank).to(dense_device)
                out_width += width
            self.out = nn.Linear(out_width, over[-1], device=dense_device)
            if config.init == "xavier":
                xavier_init_(self)
        self._recipe: Dict[str, Any] = {
            "arch": arch, "baseline": config, "dense_in_features": dense_in_features,
            "over_arch_layer_sizes": tuple(over), "dense_arch_layer_sizes": tuple(dense_sizes),
            "tables": table_specs(configs)}

    def recipe(self) -> Dict[str, Any]:
        """The :class:`~torchrec_rankmixer.models.spec.ModelSpec` fields of this model."""
        return dict(self._recipe)

    def dense_parameters(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if "embedding_bag_collection" not in n]

    def reset_dense_path(self) -> None:
        """No-op: a baseline's dense path is always eager (``DLRM_RankMixer``'s interface,
        which the export calls)."""

    def embed(self, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """The sparse half: the pooled embeddings as one matrix.

        Shapes: KJT (stride B) -> [B, sum(dims)], columns in ``feature_names`` order.
        """
        if isinstance(self.sparse_arch, TorchRecSparseArch):  # dlrm / dlrm_dcn: (B, F, D)
            return self.sparse_arch(sparse_features).flatten(1)
        return self.sparse_arch(sparse_features).values()  # a KeyedTensor (or its awaitable, sharded)

    def dense_forward(self, dense_features: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The dense half on plain tensors: dense_features [B, dense_in_features],
        embedded [B, sum(dims)] (:meth:`embed`) -> logits [B, over_arch_layer_sizes[-1]]."""
        if self.arch in ("dlrm", "dlrm_dcn"):  # torchrec.models.dlrm.DLRM.forward
            dense = self.dense_arch(dense_features)  # (B, emb_dim)
            sparse = embedded.reshape(-1, self._num_features, self._emb_dim)  # (B, F, D)
            return self.over_arch(self.inter_arch(dense_features=dense, sparse_features=sparse))  # (B, 1)
        x0 = torch.cat([dense_features, embedded], dim=1)  # (B, W)
        h = self.mlp(x0)  # (B, H): the last hidden width, or W without hidden layers
        if self.arch == "dcnv2":
            h = torch.cat([self.cross(x0), h], dim=1)  # (B, W + H)
        return self.out(h)  # (B, over_arch_layer_sizes[-1])

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        if self.validate_inputs:
            check_model_inputs(dense_features, sparse_features, self.feature_names, self.num_embeddings,
                               self.dense_in_features)
        return self.dense_forward(dense_features, self.embed(sparse_features))


__all__ = ["ARCHS", "BASELINES", "BaselineConfig", "BaselineModel", "CrossNet"]
