"""``python -m torchrec_rankmixer.demo``: train DLRM_RankMixer briefly on synthetic data (CPU).

Prints the running training loss and the held-out AUC / logloss.
"""

import argparse
import time
from typing import List, Optional

import torch
from torchrec import EmbeddingBagCollection

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.models.dlrm_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET
from torchrec_rankmixer.train.simple import train_simple
from torchrec_rankmixer.utils.metrics import binary_auc


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data = SyntheticClickData(seed=args.seed)
    ebc = EmbeddingBagCollection(tables=data.table_configs(args.embedding_dim))
    model = DLRM_RankMixer(
        embedding_bag_collection=ebc,
        dense_in_features=data.dense_in_features,
        dense_arch_layer_sizes=[64, args.embedding_dim],
        over_arch_layer_sizes=[64, 1],
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DLRM_RankMixer: {model.config}\nparameters: {n_params:,}")
    start = time.perf_counter()
    result = train_simple(
        model,
        data.batches(args.batch_size, args.steps),
        eval_batches=lambda: data.batches(1024, 20, start=EVAL_OFFSET),
        on_log=lambda s, loss: print(f"step {s:5d}  train loss {loss:.4f}"),
    )
    ref = [data.sample(1024, EVAL_OFFSET + i) for i in range(20)]
    bayes = binary_auc(
        torch.cat([data.true_logits(d, ids[:, :, 0]) for d, ids, _ in ref]),
        torch.cat([y for _, _, y in ref]),
    )
    print(
        f"done in {time.perf_counter() - start:.0f}s  eval AUC {result.eval_auc:.4f}  "
        f"eval logloss {result.eval_logloss:.4f}  (AUC of the true planted logits: {bayes:.4f})"
    )


if __name__ == "__main__":
    main()
