"""Shared pieces of the evidence benchmarks: model builders on one EBC setup, timing.

Every model is built on the same ``EmbeddingBagCollection`` (same tables, same seed), so
accuracy and speed differences come from the interaction/over-arch only:

- ``rankmixer``: :class:`DLRM_RankMixer` (tokenizer + RankMixer encoder + OverArch).
- ``dcnv2``: TorchRec ``DLRM_DCN`` (LowRankCrossNet + OverArch).
- ``dlrm``: TorchRec ``DLRM`` (pairwise dot interaction + OverArch).
- ``dnn``: a plain MLP on the concatenated embeddings (and dense features).
"""

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer import DLRM_RankMixer, RankMixerConfig

MODEL_NAMES = ("rankmixer", "dcnv2", "dlrm", "dnn")


class PlainDNN(nn.Module):
    """MLP on [dense, concatenated embeddings] -> logits (the BARS "DNN" baseline).

    Shapes: dense [B, dense_in], KJT stride B -> [B, 1].
    """

    def __init__(
        self, ebc: EmbeddingBagCollection, dense_in_features: int, hidden: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding_bag_collection = ebc
        width = sum(c.embedding_dim * len(c.feature_names) for c in ebc.embedding_bag_configs())
        layers: List[nn.Module] = []
        prev = width + dense_in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        emb = self.embedding_bag_collection(sparse).values()  # (B, F*E)
        return self.mlp(torch.cat([dense, emb], dim=1))  # (B, 1)


@dataclass
class ModelSpec:
    """How to size each model; defaults are the Frappe settings (see docs/benchmarks.md)."""

    hidden: List[int] = field(default_factory=lambda: [400, 400, 400])
    dcn_layers: int = 3
    dcn_low_rank: int = 64
    rankmixer: Optional[RankMixerConfig] = None
    rankmixer_over: List[int] = field(default_factory=lambda: [256])
    feature_groups: Optional[Dict[str, List[str]]] = None
    dropout: float = 0.0


def make_ebc(tables: List[EmbeddingBagConfig], seed: int) -> EmbeddingBagCollection:
    """The shared embedding setup: same tables, same init for every model at one seed."""
    torch.manual_seed(seed)
    return EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))


def build_model(
    name: str, tables: List[EmbeddingBagConfig], dense_in_features: int, spec: ModelSpec, seed: int
) -> nn.Module:
    """One of :data:`MODEL_NAMES` on a fresh EBC; dense modules seeded by ``seed`` too.

    TorchRec's DLRM/DLRM_DCN need a dense input whose arch output width equals the
    embedding dim; with ``dense_in_features == 0`` callers feed a constant column of ones
    (``dense_in_features=1``), which the dense arch turns into a learned bias token.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model ({name!r}) must be one of {list(MODEL_NAMES)}")
    ebc = make_ebc(tables, seed)
    torch.manual_seed(seed + 1)
    emb_dim = tables[0].embedding_dim
    over = list(spec.hidden) + [1]
    if name == "dnn":
        return PlainDNN(ebc, dense_in_features, spec.hidden, spec.dropout)
    if name == "dlrm":
        return DLRM(ebc, dense_in_features, [emb_dim], over)
    if name == "dcnv2":
        return DLRM_DCN(ebc, dense_in_features, [emb_dim], over, spec.dcn_layers, spec.dcn_low_rank)
    return DLRM_RankMixer(
        ebc, dense_in_features, [emb_dim] if dense_in_features else [], list(spec.rankmixer_over) + [1],
        rankmixer_config=spec.rankmixer, feature_groups=spec.feature_groups,
        interaction="none",  # the encoder alone: what sections 2, 5 and 6 measured
        validate_inputs=False,
    )


def dense_param_count(model: nn.Module) -> int:
    """Parameters outside the embedding tables."""
    return sum(
        p.numel() for n, p in model.named_parameters() if "embedding_bag_collection" not in n
    )


def kjt_from_ids(ids: torch.Tensor, keys: List[str]) -> KeyedJaggedTensor:
    """One id per feature per sample: ids [B, F] -> KJT (feature-major values)."""
    B, F = ids.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=ids.t().reshape(-1), lengths=torch.ones(F * B, dtype=torch.int32)
    )


def bench(fn: Callable[[], object], warmup: int = 2, min_time: float = 0.3, max_iters: int = 200) -> float:
    """Fastest seconds per call of ``fn`` (after ``warmup`` calls), at least 3 timed calls.

    The minimum, not the median: on a CPU shared with other jobs, a call's extra time
    is interference, so the fastest call is the best estimate of the op's own cost.
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int = 3, **kw: float) -> Dict[str, float]:
    """Best-of-``rounds`` fastest time per name, the candidates interleaved round by round
    so background load hits all of them alike."""
    best: Dict[str, float] = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = min(best[k], bench(fn, **kw))  # type: ignore[arg-type]
    return best


def cpu_name() -> str:
    """The CPU model and the ISA extensions that change speed or int8 numerics here (from
    /proc/cpuinfo on Linux; the architecture name elsewhere), e.g.
    ``"AMD EPYC (avx512f, avx512_vnni, avx512_bf16)"``."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{model} ({', '.join(isa)})" if isa else model


def machine_line() -> str:
    """One line naming the machine and versions, for the docs."""
    import os

    import torchrec

    return (
        f"{cpu_name()}, {os.cpu_count()} cores visible, "
        f"torch {torch.__version__}, torchrec {torchrec.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
