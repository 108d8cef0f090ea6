"""DLRM_RankMixer: TorchRec's DLRM_DCN with the DCN over-arch swapped for RankMixer."""

import math
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, OverArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.features.sequence_arch import build_sequence_arch
from torchrec_rankmixer.features.tokenizer import SemanticTokenizer, feature_dims_of
from torchrec_rankmixer.models.validation import check_model_inputs
from torchrec_rankmixer.modules.block import RankMixerEncoder

# fx.wrap patches the calling module's globals: register the imported name here too, so
# TorchRec's tracer (TrainPipelineSparseDist, torchrec.fx) records one opaque call.
torch.fx.wrap("check_model_inputs")

DEFAULT_MIN_D_MODEL = 64
DEFAULT_MAX_SPARSE_TOKENS = 7


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


def default_config(num_tokens: int) -> RankMixerConfig:
    """The config used when none is given: T tokens, H = T, D = the smallest multiple of
    T that is >= 64, L = 2, k = 4, post-LN, mean pooling."""
    d_model = num_tokens * math.ceil(DEFAULT_MIN_D_MODEL / num_tokens)
    return RankMixerConfig(d_model=d_model, num_tokens=num_tokens, num_layers=2)


class DLRM_RankMixer(nn.Module):
    """A drop-in for ``torchrec.models.dlrm.DLRM_DCN`` whose interaction/over-arch is RankMixer.

    Data flow: KJT -> EmbeddingBagCollection -> KeyedTensor; dense -> DenseArch (MLP);
    SemanticTokenizer -> tokens [B, T, D]; RankMixerEncoder -> [B, D]; OverArch -> logits.

    Args:
        embedding_bag_collection: the EBC (may be on the meta device, for DMP).
        dense_in_features: dense feature width (0: no dense input, e.g. Frappe).
        dense_arch_layer_sizes: DenseArch MLP sizes (ignored when dense_in_features == 0).
        over_arch_layer_sizes: OverArch sizes on the pooled vector; the last is the number
            of logits (tasks), as in DLRM_DCN.
        dense_device: device for the dense modules.
        dcn_num_layers: accepted so ``DLRM_DCN(...)`` -> ``DLRM_RankMixer(...)`` is a
            one-line change; unused (a UserWarning says so when given).
        dcn_low_rank_dim: as ``dcn_num_layers``.
        rankmixer_config: the encoder config; its ``num_tokens`` must equal
            T_s + dense tokens. Default: :func:`default_config`.
        feature_groups: semantic groups (group -> feature names), one token each.
        tokenization: ``"groups"``, ``"auto"`` or ``"split"`` (default: groups if
            ``feature_groups`` else auto).
        num_dense_tokens: tokens made from the dense arch output (default 1).
        validate_inputs: check every batch (keys, id ranges, NaN, batch sizes).
        sequence_embedding_collection: optional EmbeddingCollection (unpooled) for
            behaviour sequences; its features come in the same KJT (docs/sequences.md).
        sequence_features: one SequenceFeatureConfig per EC feature (max_len, keep,
            pooling, candidate); pooled sequences join the tokenizer's features.

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
        over_arch_layer_sizes: List[int],
        dense_device: Optional[torch.device] = None,
        dcn_num_layers: Optional[int] = None,
        dcn_low_rank_dim: Optional[int] = None,
        rankmixer_config: Optional[RankMixerConfig] = None,
        feature_groups: Optional[Dict[str, Sequence[str]]] = None,
        tokenization: Optional[str] = None,
        num_dense_tokens: int = 1,
        validate_inputs: bool = True,
        sequence_embedding_collection: Optional[EmbeddingCollection] = None,
        sequence_features: Optional[Sequence[SequenceFeatureConfig]] = None,
    ) -> None:
        super().__init__()
        if dcn_num_layers is not None or dcn_low_rank_dim is not None:
            warnings.warn(
                "DLRM_RankMixer ignores dcn_num_layers/dcn_low_rank_dim (DCN settings); "
                "size the model with rankmixer_config",
                UserWarning,
                stacklevel=2,
            )
        if not isinstance(dense_in_features, int) or dense_in_features < 0:
            raise ValueError(f"dense_in_features ({dense_in_features!r}) must be an int >= 0")
        if len(over_arch_layer_sizes) < 2:
            raise ValueError(
                f"over_arch_layer_sizes ({over_arch_layer_sizes}) needs at least 2 sizes "
                "(hidden..., num_logits), as in DLRM_DCN"
            )
        feature_dims = feature_dims_of(embedding_bag_collection)
        self.sequence_arch = build_sequence_arch(
            sequence_embedding_collection, sequence_features, feature_dims, dense_device
        )
        if self.sequence_arch is not None:  # pooled sequences are features for the tokenizer
            feature_dims = {**feature_dims, **self.sequence_arch.output_dims}
        n_dense = num_dense_tokens if dense_in_features > 0 else 0
        config = rankmixer_config
        if config is None:
            if feature_groups:
                n_sparse = len(feature_groups)
            elif tokenization == "split":
                n_sparse = DEFAULT_MAX_SPARSE_TOKENS
            else:
                n_sparse = min(len(feature_dims), DEFAULT_MAX_SPARSE_TOKENS)
            config = default_config(n_sparse + n_dense)
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
        self.over_arch = OverArch(config.output_dim, over_arch_layer_sizes, dense_device)

    def dense_parameters(self) -> List[nn.Parameter]:
        """Every parameter outside the embedding tables."""
        tables = ("sparse_arch.", "sequence_arch.embedding_collection.")
        return [p for n, p in self.named_parameters() if not n.startswith(tables)]

    def forward(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> torch.Tensor:
        if self.validate_inputs:
            check_model_inputs(
                dense_features, sparse_features, self.feature_names, self.num_embeddings,
                self.dense_in_features,
            )
        embedded = self.sparse_arch(sparse_features)  # KeyedTensor, values (B, sum(dims))
        if self.sequence_arch is not None:  # append pooled sequences, (B, sum(dims) + S * d_seq)
            embedded = self.sequence_arch(sparse_features, embedded)
        dense = self.dense_arch(dense_features) if self.dense_arch is not None else None
        tokens = self.tokenizer(embedded, dense)  # (B, T, D)
        pooled = self.encoder(tokens)  # (B, D) or (B, T*D)
        return self.over_arch(pooled)  # (B, num_logits)
