"""DLRM_RankMixer: TorchRec's DLRM_DCN with the DCN over-arch swapped for RankMixer."""

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, OverArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.features.sequence_arch import build_sequence_arch
from torchrec_rankmixer.features.tokenizer import SemanticTokenizer, feature_dims_of
from torchrec_rankmixer.models.defaults import DEFAULT_OVER_ARCH_INIT, default_config
from torchrec_rankmixer.models.heads import TaskTowers, num_logits_of
from torchrec_rankmixer.models.table_spec import table_specs
from torchrec_rankmixer.models.validation import check_model_inputs, dense_dtype_of
from torchrec_rankmixer.modules.block import RankMixerEncoder
from torchrec_rankmixer.modules.deep import INITS, DeepBranch, DeepConfig, xavier_init_
from torchrec_rankmixer.modules.interaction import (
    DotInteraction,
    DotProductNorm,
    LowRankCrossNet,
    cross_rank_of,
    resolve_cross,
    resolve_dot_norm,
    resolve_interaction,
    uses_dot,
)
from torchrec_rankmixer.utils.checks import check_choice, check_layer_sizes, check_non_negative_int

# fx.wrap patches the calling module's globals: register the imported name here too, so
# TorchRec's tracer (TrainPipelineSparseDist, torchrec.fx) records one opaque call.
torch.fx.wrap("check_model_inputs")


class SparseArch(nn.Module):
    """Holds the EBC as ``sparse_arch.embedding_bag_collection`` (TorchRec DLRM's layout,
    so sharding plans and scripts that address that path keep working).

    Shapes: KJT with stride B -> KeyedTensor with values [B, sum(dims)].
    """

    def __init__(self, embedding_bag_collection: EmbeddingBagCollection) -> None:
        super().__init__()
        self.embedding_bag_collection = embedding_bag_collection

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return self.embedding_bag_collection(features)


class DLRM_RankMixer(nn.Module):
    """A drop-in for ``torchrec.models.dlrm.DLRM_DCN`` whose interaction/over-arch is RankMixer.

    Data flow: KJT -> EmbeddingBagCollection -> KeyedTensor; dense -> DenseArch (MLP);
    SemanticTokenizer -> tokens [B, T, D]; RankMixerEncoder -> [B, D]; + Linear(pairwise
    dot products) and/or + Linear(cross layers on [dense, embeddings]) -> [B, D] (the
    interaction); OverArch -> logits (+ the deep branch's logits, with ``deep``).

    Args:
        embedding_bag_collection: the EBC (may be on the meta device, for DMP).
        dense_in_features: dense feature width (0: no dense input, e.g. Frappe).
        dense_arch_layer_sizes: DenseArch MLP sizes (ignored when dense_in_features == 0).
        over_arch_layer_sizes: OverArch sizes on the pooled vector; the last is the number
            of logits (tasks), as in DLRM_DCN. None when ``over_arch`` is given.
        dense_device: device for the dense modules.
        dcn_num_layers: cross layers of the ``"cross"`` / ``"dot_cross"`` interaction
            (the default's too), as in ``DLRM_DCN``; None: 3 (TorchRec dlrm_main's).
            Accepted with every interaction so ``DLRM_DCN(...)`` -> ``DLRM_RankMixer(...)``
            is a one-line change; with one without cross layers a UserWarning says it is
            unused.
        dcn_low_rank_dim: rank r of each cross layer's W = U V, as in ``DLRM_DCN``;
            None: 512 (TorchRec dlrm_main's). The default interaction caps it at a third
            of the cross layers' input width W (a UserWarning when it lowers a given
            rank; :func:`~torchrec_rankmixer.modules.interaction.default_cross_rank`).
        rankmixer_config: the encoder config; its ``num_tokens`` must equal
            T_s + dense tokens. Default: :func:`default_config`.
        feature_groups: semantic groups (group -> feature names), one token each.
        tokenization: ``"groups"``, ``"auto"`` or ``"split"`` (default: groups if
            ``feature_groups`` else auto).
        num_dense_tokens: tokens made from the dense arch output (default 1).
        interaction: what joins the encoder's pooled tokens (modules/interaction.py),
            each part projected to the pooled width by a Linear and added: ``"dot"``,
            DLRM's pairwise dot products of the dense arch output and the feature
            embeddings; ``"cross"``, DLRM_DCN's low-rank cross layers on the concatenated
            [dense arch output, embeddings]; ``"dot_cross"``, both; ``"none"``, the encoder
            alone (the paper). Default: ``"dot_cross"`` (rank capped at W / 3) when every
            feature and the dense arch output share one width (always so in TorchRec's
            DLRM_DCN), else ``"none"``
            (:func:`~torchrec_rankmixer.modules.interaction.resolve_interaction`).
        dot_norm: ``"batch"``: the dot products' projection reads the raw products and
            their BatchNorm1d side by side (:class:`~torchrec_rankmixer.modules.interaction.DotProductNorm`;
            docs/quality.md, decision 9); ``"none"``: the raw products alone. Default:
            ``"batch"`` with dot products, else ``"none"``.
        deep: a :class:`~torchrec_rankmixer.modules.deep.DeepConfig`: an MLP on the
            concatenated [dense arch output, embeddings] whose logits add to the
            over-arch's (DCN-V2's parallel deep network; modules/deep.py). None: no branch
            (the default; it is for small data sets such as Frappe, docs/quality.md).
        validate_inputs: check every batch (keys, id ranges, NaN, batch sizes).
        sequence_embedding_collection: optional EmbeddingCollection (unpooled) for
            behaviour sequences; its features come in the same KJT (docs/sequences.md).
        sequence_features: one SequenceFeatureConfig per EC feature (max_len, keep,
            pooling, candidate); pooled sequences join the tokenizer's features.
        over_arch: a module in place of the OverArch, on the pooled vector
            [B, rankmixer_config.output_dim] -> logits [B, n]; e.g. ESMM's
            ``TaskTowers(config.output_dim, [64], num_tasks=2)`` (models/heads.py).
        over_arch_init: how the head is initialised. ``"xavier"`` (the default):
            xavier-normal weights and zero biases in the OverArch built from
            ``over_arch_layer_sizes`` (BARS / FuxiCTR's init, up to 2.5x PyTorch's weight
            scale in the narrowing layers), and zero biases in the interaction
            projections; chosen on the quality suite (docs/quality.md, decision 8).
            ``"torch"``: PyTorch's default ``nn.Linear`` init, as in TorchRec's
            ``DLRM_DCN``. A given ``over_arch`` module is never re-initialised.

    Shapes:
        dense_features [B, dense_in_features], sparse_features KJT (stride B)
        -> logits [B, over_arch_layer_sizes[-1]].

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name="t1", embedding_dim=8, num_embeddings=100,
        ...                        feature_names=["f1", "f3"]),
        ...     EmbeddingBagConfig(name="t2", embedding_dim=8, num_embeddings=100,
        ...                        feature_names=["f2"])])
        >>> model = DLRM_RankMixer(embedding_bag_collection=ebc, dense_in_features=10,
        ...                        dense_arch_layer_sizes=[20, 8], over_arch_layer_sizes=[5, 1])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f1", "f3", "f2"],
        ...     values=torch.tensor([1, 2, 4, 5, 4, 3, 2]), lengths=torch.tensor([2, 1, 1, 1, 1, 1]))
        >>> model(torch.rand(2, 10), kjt).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: List[int],
        over_arch_layer_sizes: Optional[List[int]],
        dense_device: Optional[torch.device] = None,
        dcn_num_layers: Optional[int] = None,
        dcn_low_rank_dim: Optional[int] = None,
        rankmixer_config: Optional[RankMixerConfig] = None,
        feature_groups: Optional[Dict[str, Sequence[str]]] = None,
        tokenization: Optional[str] = None,
        num_dense_tokens: int = 1,
        interaction: Optional[str] = None,
        dot_norm: Optional[str] = None,
        deep: Optional[DeepConfig] = None,
        validate_inputs: bool = True,
        sequence_embedding_collection: Optional[EmbeddingCollection] = None,
        sequence_features: Optional[Sequence[SequenceFeatureConfig]] = None,
        over_arch: Optional[nn.Module] = None,
        over_arch_init: str = DEFAULT_OVER_ARCH_INIT,
    ) -> None:
        super().__init__()
        check_non_negative_int("dense_in_features", dense_in_features)
        check_choice("over_arch_init", over_arch_init, INITS)
        if dense_in_features > 0:
            check_layer_sizes("dense_arch_layer_sizes", dense_arch_layer_sizes)
        if (over_arch is None) == (over_arch_layer_sizes is None):
            raise ValueError("give exactly one of over_arch_layer_sizes and over_arch")
        if over_arch_layer_sizes is not None:
            check_layer_sizes("over_arch_layer_sizes", over_arch_layer_sizes, min_len=2)
        feature_dims = feature_dims_of(embedding_bag_collection)
        if not feature_dims:
            raise ValueError("embedding_bag_collection has no tables (no sparse features); "
                             "DLRM_RankMixer needs at least one embedded feature")
        self.sequence_arch = build_sequence_arch(
            sequence_embedding_collection, sequence_features, feature_dims, dense_device
        )
        if self.sequence_arch is not None:  # pooled sequences are features for the tokenizer
            feature_dims = {**feature_dims, **self.sequence_arch.output_dims}
        n_dense = num_dense_tokens if dense_in_features > 0 else 0
        config = rankmixer_config
        if config is None:
            config = default_config(len(feature_dims), n_dense, feature_groups, tokenization)
        n_sparse = config.num_tokens - n_dense
        if n_sparse < 1:
            raise ValueError(
                f"rankmixer_config.num_tokens ({config.num_tokens}) must exceed the number of "
                f"dense tokens ({n_dense})"
            )

        self.config = config
        self.dense_in_features = dense_in_features
        self.feature_names: List[str] = list(feature_dims)
        rows = {f: c.num_embeddings for c in embedding_bag_collection.embedding_bag_configs() for f in c.feature_names}
        if self.sequence_arch is not None:
            rows.update(self.sequence_arch.num_embeddings)
        self.num_embeddings: List[int] = [rows[f] for f in self.feature_names]
        self.validate_inputs = validate_inputs

        self.sparse_arch = SparseArch(embedding_bag_collection)
        self.dense_arch: Optional[DenseArch] = None
        dense_out = 0
        if dense_in_features > 0:
            self.dense_arch = DenseArch(dense_in_features, dense_arch_layer_sizes, dense_device)
            dense_out = dense_arch_layer_sizes[-1]
        self.tokenizer = SemanticTokenizer(
            feature_dims,
            config.d_model,
            num_sparse_tokens=n_sparse,
            groups=feature_groups,
            mode=tokenization,
            dense_in_features=dense_out,
            num_dense_tokens=n_dense,
            device=dense_device,
        )
        self.encoder = RankMixerEncoder(config, device=dense_device)
        self.interaction = resolve_interaction(interaction, feature_dims, dense_out)
        x0_width = sum(feature_dims.values()) + dense_out  # [dense arch output, embeddings]
        dcn_low_rank_dim = cross_rank_of(interaction, self.interaction, x0_width, dcn_low_rank_dim)
        cross_layers, cross_rank = resolve_cross(self.interaction, dcn_num_layers, dcn_low_rank_dim, strict=False)
        self.dot_norm = resolve_dot_norm(dot_norm, self.interaction)
        self.dot_interaction: Optional[DotInteraction] = None
        self.interaction_proj: Optional[nn.Linear] = None
        self.dot_products_norm: Optional[DotProductNorm] = None
        if uses_dot(self.interaction):
            width = next(iter(feature_dims.values()))
            self.dot_interaction = DotInteraction(len(feature_dims), width, dense_out > 0, config.kernel)
            proj_in = self.dot_interaction.output_dim  # P
            if self.dot_norm == "batch":  # the raw products and their BatchNorm, side by side: 2P
                self.dot_products_norm = DotProductNorm(proj_in, dense_device)
                proj_in = self.dot_products_norm.output_dim
            self.interaction_proj = nn.Linear(proj_in, config.output_dim, device=dense_device)
        self.cross_net: Optional[LowRankCrossNet] = None
        self.cross_proj: Optional[nn.Linear] = None
        if cross_layers is not None and cross_rank is not None:
            self.cross_net = LowRankCrossNet(x0_width, cross_layers, cross_rank)
            if dense_device is not None:
                self.cross_net.to(dense_device)
            self.cross_proj = nn.Linear(x0_width, config.output_dim, device=dense_device)
        self.deep_branch: Optional[DeepBranch] = None
        if deep is not None:
            if not isinstance(deep, DeepConfig):
                raise ValueError(f"deep must be a DeepConfig or None; got {type(deep).__name__}")
            self.deep_branch = DeepBranch(x0_width, num_logits_of(over_arch, over_arch_layer_sizes), deep, dense_device)
        self.over_arch = (
            over_arch if over_arch is not None
            else OverArch(config.output_dim, list(over_arch_layer_sizes or []), dense_device)
        )
        if over_arch_init == "xavier":
            if over_arch is None:
                xavier_init_(self.over_arch)
            for proj in (self.interaction_proj, self.cross_proj):
                if proj is not None:
                    nn.init.zeros_(proj.bias)
        self._compiled_dense: Optional[Callable[..., torch.Tensor]] = None  # compile_dense_path
        self._has_moe = config.use_moe
        self._recipe = {  # what models/spec.py's ModelSpec.from_model reads back
            "tables": table_specs(embedding_bag_collection.embedding_bag_configs()),
            "dense_in_features": dense_in_features,
            "dense_arch_layer_sizes": tuple(dense_arch_layer_sizes) if dense_in_features > 0 else (),
            "rankmixer_config": config,
            "over_arch_layer_sizes": None if over_arch_layer_sizes is None else tuple(over_arch_layer_sizes),
            "tokenization": self.tokenizer.mode,
            "feature_groups": self.tokenizer.groups,
            "num_dense_tokens": num_dense_tokens,
            "interaction": self.interaction,
            "dot_norm": self.dot_norm,
            "dcn_num_layers": cross_layers,
            "dcn_low_rank_dim": cross_rank,
            "deep": deep,
            "sequence_tables": (
                table_specs(sequence_embedding_collection.embedding_configs())
                if sequence_embedding_collection is not None else ()
            ),
            "sequence_features": tuple(sequence_features or ()),
            "over_arch_init": over_arch_init,
        }

    def recipe(self) -> Dict[str, Any]:
        """The :class:`~torchrec_rankmixer.models.spec.ModelSpec` fields of this model.

        The heads are read from ``over_arch``: an OverArch built from
        ``over_arch_layer_sizes`` (task ``"ctr"``) or ESMM's two :class:`TaskTowers`.
        """
        out = dict(self._recipe)
        if isinstance(self.over_arch, TaskTowers):
            if len(self.over_arch.towers) != 2:
                raise ValueError(
                    f"over_arch has {len(self.over_arch.towers)} task towers; a ModelSpec describes "
                    "one over-arch or ESMM's 2 towers (CTR, CVR)"
                )
            out.update(task="esmm", tower_layer_sizes=tuple(self.over_arch.tower_layer_sizes),
                       over_arch_layer_sizes=None)
        elif out["over_arch_layer_sizes"] is None:
            raise ValueError(
                f"over_arch is a custom {type(self.over_arch).__name__}; a ModelSpec describes an "
                "OverArch (over_arch_layer_sizes) or ESMM's TaskTowers"
            )
        return out

    def dense_parameters(self) -> List[nn.Parameter]:
        """Every parameter outside the embedding tables."""
        tables = ("sparse_arch.", "sequence_arch.embedding_collection.")
        return [p for n, p in self.named_parameters() if not n.startswith(tables)]

    def compile_dense_path(self, compile_mode: Optional[str] = None, **compile_kwargs: Any) -> None:
        """Compile the dense path with ``torch.compile``; the sparse arch stays eager.

        As TorchRec's ``DLRM.compile_dense_path``: the embedding lookups (EBC and the
        sequence EmbeddingCollection, sharded or not, with KJT inputs whose shapes change
        every batch) run eager, and what follows them is compiled, here as one graph:
        :meth:`dense_forward` (dense arch, tokenizer, encoder, over-arch). Additive and
        idempotent: the eager ``forward`` is unchanged until it is called, a second call is
        a no-op, state_dict keys do not change (the modules are not wrapped), so
        checkpoints, DistributedModelParallel and TrainPipelineSparseDist (whose tracer
        sees the eager path) work as before. The compiled path runs while training and in
        eval mode; a model with Sparse-MoE layers runs eval-mode calls eager (their sparse
        execution has data-dependent sizes). Export and quantization run eager
        (:meth:`reset_dense_path` on their copy).

        Args:
            compile_mode: the ``torch.compile`` mode; None is inductor's default.
                TorchRec's default, ``"reduce-overhead"``, records CUDA graphs (GPU only),
                re-recorded for every new batch size.
            **compile_kwargs: further ``torch.compile`` arguments (``dynamic``,
                ``fullgraph``, ``backend``, ``options``).

        Example::

            >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
            >>> ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
            ...     name="t", embedding_dim=8, num_embeddings=10, feature_names=["f"])])
            >>> model = DLRM_RankMixer(ebc, 2, [8], [4, 1])
            >>> model.compile_dense_path(backend="eager")  # inductor needs a C++ compiler
            >>> model.dense_path_compiled
            True
        """
        if self._compiled_dense is None:
            self._compiled_dense = torch.compile(type(self).dense_forward, mode=compile_mode, **compile_kwargs)

    def reset_dense_path(self) -> None:
        """Run the dense path eager again (undoes :meth:`compile_dense_path`)."""
        self._compiled_dense = None

    @property
    def dense_path_compiled(self) -> bool:
        """Whether :meth:`compile_dense_path` is in effect."""
        return self._compiled_dense is not None

    def embed(self, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """The sparse half: embedding lookups (and pooled sequences) as one matrix.

        Shapes: KJT (stride B) -> [B, sum(dims)], columns in ``feature_names`` order.
        """
        embedded = self.sparse_arch(sparse_features)  # KeyedTensor, values (B, sum(dims))
        if self.sequence_arch is not None:  # append pooled sequences, (B, sum(dims) + S * d_seq)
            embedded = self.sequence_arch(sparse_features, embedded)
        return self.tokenizer.ordered_values(embedded)

    def dense_forward(self, dense_features: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The dense half on plain tensors: dense arch, tokenizer, encoder, heads.

        Shapes: dense_features [B, dense_in_features], embedded [B, sum(dims)]
        (:meth:`embed`) -> logits [B, num_logits].
        """
        dense = self.dense_arch(dense_features) if self.dense_arch is not None else None
        tokens = self.tokenizer.tokenize(embedded, dense)  # (B, T, D)
        pooled = self.encoder(tokens)  # (B, D) or (B, T*D)
        if self.dot_interaction is not None and self.interaction_proj is not None:
            products = self.dot_interaction(embedded, dense)  # (B, P)
            if self.dot_products_norm is not None:
                products = self.dot_products_norm(products)  # (B, 2P)
            pooled = pooled + self.interaction_proj(products)  # (B, D)
        x0 = embedded  # (B, W): [dense arch output, embeddings], DLRM_DCN's order, built once
        if dense is not None and (self.cross_net is not None or self.deep_branch is not None):
            x0 = torch.cat([dense, embedded], dim=1)
        if self.cross_net is not None and self.cross_proj is not None:
            pooled = pooled + self.cross_proj(self.cross_net(x0))  # (B, D)
        logits = self.over_arch(pooled)  # (B, num_logits)
        if self.deep_branch is not None:
            logits = logits + self.deep_branch(x0)  # (B, num_logits)
        return logits

    def forward(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> torch.Tensor:
        if self.validate_inputs:
            check_model_inputs(
                dense_features, sparse_features, self.feature_names, self.num_embeddings,
                self.dense_in_features, None, dense_dtype_of(self.dense_arch),
            )
        embedded = self.embed(sparse_features)  # (B, sum(dims))
        if self._use_compiled():
            return self._compiled_dense(self, dense_features, embedded)  # type: ignore[misc]
        return self.dense_forward(dense_features, embedded)

    def _use_compiled(self) -> bool:
        if self._compiled_dense is None or torch.compiler.is_compiling():
            return False
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing() or torch.jit.is_tracing():
            return False  # tracers (TorchRec's pipeline, export) see the eager path
        return self.training or not self._has_moe
