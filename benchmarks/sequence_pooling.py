"""Held-out AUC of DLRM_RankMixer on SyntheticSequenceData per history pooling.

    python -m benchmarks.sequence_pooling --steps 1500 --seeds 0 1 2   (from the repo root)

Data: a weak base logit (2 first-order id features) plus ``effect * (hit - 1/2)``, where
``hit`` = the candidate's category occurs among the last 20 history items (200 items,
100 categories, histories of 0..40 items, 30% of candidates drawn to match). Model:
max_len 20, keep recent, d=16 item table shared by candidate and history.

Every variant sees the same batches, the same init seed and the same token layout
(candidate + history in one "behaviour" token); only the history's pooling (and, for
the ``target/oldest`` control, the truncation side) differs. Prints one line per run
and the mean over seeds.
"""

import argparse
import dataclasses
import functools
import time
from typing import List, Optional, Tuple

import torch
from torchrec import EmbeddingBagCollection, EmbeddingCollection

from torchrec_rankmixer.config import RankMixerConfig
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic_sequences import CANDIDATE, HISTORY, SyntheticSequenceData
from torchrec_rankmixer.features.sequence import SequenceFeatureConfig
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET
from torchrec_rankmixer.train.simple import train_simple

VARIANTS: Tuple[Tuple[str, str], ...] = (
    ("mean", "recent"), ("target", "recent"), ("target_softmax", "recent"), ("max", "recent"),
    ("target", "oldest"),
)


def sequence_configs(data: SyntheticSequenceData, pooling: str, keep: str,
                     max_len: int) -> List[SequenceFeatureConfig]:
    """``pooling``: mean / max / target (default: DIN's raw weights) / target_softmax."""
    if pooling != "target_softmax":
        return data.sequence_feature_configs(max_len, pooling, keep)
    cand, hist = data.sequence_feature_configs(max_len, "target", keep)
    return [cand, dataclasses.replace(hist, attention_normalization="softmax")]


def build_model(data: SyntheticSequenceData, pooling: str, keep: str, max_len: int,
                dim: int, seed: int, init_std: float = 0.0) -> DLRM_RankMixer:
    """DLRM_RankMixer with the base features in one token and candidate + history in another.
    ``init_std > 0``: the item table starts N(0, init_std^2) instead of TorchRec's default."""
    torch.manual_seed(seed)
    item_tables = data.sequence_table_configs(dim)
    if init_std > 0:
        init = functools.partial(torch.nn.init.normal_, std=init_std)
        item_tables = [dataclasses.replace(t, init_fn=init) for t in item_tables]
    return DLRM_RankMixer(
        embedding_bag_collection=EmbeddingBagCollection(tables=data.embedding_bag_configs(dim)),
        dense_in_features=data.base.dense_in_features,
        dense_arch_layer_sizes=[32, dim],  # unused: the benchmark data has no dense features
        over_arch_layer_sizes=[32, 1],
        rankmixer_config=RankMixerConfig(
            d_model=48, num_tokens=2 + (data.base.dense_in_features > 0), num_layers=2
        ),
        feature_groups={"context": data.base.feature_names, "behaviour": [CANDIDATE, HISTORY]},
        interaction="none",  # the encoder alone, as docs/sequences.md measured it
        sequence_embedding_collection=EmbeddingCollection(tables=item_tables),
        sequence_features=sequence_configs(data, pooling, keep, max_len),
    )


def run(data: SyntheticSequenceData, pooling: str, keep: str, steps: int, batch_size: int,
        max_len: int, dim: int, seed: int, lr: float, init_std: float) -> float:
    """Train ``steps`` batches, return held-out AUC on 8 batches of 1024."""
    model = build_model(data, pooling, keep, max_len, dim, seed, init_std)
    result = train_simple(
        model, data.batches(batch_size, steps), lr=lr, log_every=max(steps, 1),
        eval_batches=lambda: data.batches(1024, 8, start=EVAL_OFFSET),
    )
    return result.eval_auc


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--init-std", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-items", type=int, default=200)
    parser.add_argument("--num-categories", type=int, default=100)
    parser.add_argument("--recent-window", type=int, default=20)
    parser.add_argument("--max-history", type=int, default=40)
    parser.add_argument("--match-rate", type=float, default=0.3)
    parser.add_argument("--variants", nargs="+", default=[f"{p}/{k}" for p, k in VARIANTS],
                        help="pooling/keep pairs to run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core box: one thread avoids intra-op stalls
    results = {tuple(v.split("/")): [] for v in args.variants}
    for seed in args.seeds:
        data = SyntheticSequenceData(
            # a weak base logit (first-order terms only), so the sequence term matters
            base=SyntheticClickData(num_sparse_features=2, num_interactions=0,
                                    dense_in_features=0, seed=seed),
            num_items=args.num_items, num_categories=args.num_categories,
            max_history=args.max_history, recent_window=args.recent_window,
            match_rate=args.match_rate, seed=seed,
        )
        for variant in args.variants:  # interleaved per seed
            pooling, keep = variant.split("/")
            start = time.perf_counter()
            auc = run(data, pooling, keep, args.steps, args.batch_size, args.max_len,
                      args.dim, seed, args.lr, args.init_std)
            results[(pooling, keep)].append(auc)
            print(f"seed {seed} {pooling:14s} keep={keep:6s} AUC {auc:.4f} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
    print("mean over seeds:")
    for (pooling, keep), aucs in results.items():
        print(f"  {pooling:14s} keep={keep:6s} AUC {sum(aucs) / len(aucs):.4f}  {['%.4f' % a for a in aucs]}")


if __name__ == "__main__":
    main()
