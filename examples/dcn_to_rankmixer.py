"""DLRM_DCN -> DLRM_RankMixer: the one-line swap, trained side by side on CPU.

    .venv/bin/python examples/dcn_to_rankmixer.py [--steps 400]

Both models get the same EmbeddingBagCollection layout, the same synthetic data and the
same optimizer; the script prints parameters, FLOPs per sample, loss and held-out AUC.
"""

import argparse
import time

import torch
from torchrec import EmbeddingBagCollection
from torchrec.models.dlrm import DLRM_DCN

from torchrec_rankmixer import DLRM_RankMixer
from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.data.synthetic import EVAL_OFFSET
from torchrec_rankmixer.train.simple import train_simple
from torchrec_rankmixer.utils.flops import count_flops


def build(model_cls: type, data: SyntheticClickData, dim: int) -> torch.nn.Module:
    ebc = EmbeddingBagCollection(tables=data.table_configs(dim))
    kwargs = dict(
        embedding_bag_collection=ebc,
        dense_in_features=data.dense_in_features,
        dense_arch_layer_sizes=[64, dim],
        over_arch_layer_sizes=[64, 1],
    )
    if model_cls is DLRM_DCN:
        return DLRM_DCN(**kwargs, dcn_num_layers=3, dcn_low_rank_dim=32)
    # --- the one-line change: DLRM_DCN(...) -> DLRM_RankMixer(...) ---------------
    # DLRM_RankMixer accepts (and ignores, with a warning) dcn_num_layers/dcn_low_rank_dim,
    # so renaming the class in an existing script is enough. Here we leave them out.
    return DLRM_RankMixer(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args()

    data = SyntheticClickData(seed=0)
    probe = data.batch(64, 0)
    rows = []
    for cls in (DLRM_DCN, DLRM_RankMixer):
        torch.manual_seed(0)
        model = build(cls, data, args.dim)
        dense_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("sparse_arch"))
        flops = count_flops(model, probe.dense_features, probe.sparse_features) // 64
        start = time.perf_counter()
        result = train_simple(
            model,
            data.batches(args.batch_size, args.steps),
            eval_batches=lambda: data.batches(1024, 20, start=EVAL_OFFSET),
            lr=1e-3,
            log_every=max(args.steps // 4, 1),
        )
        secs = time.perf_counter() - start
        rows.append((cls.__name__, dense_params, flops, result.losses[-1], result.eval_auc, result.eval_logloss, secs))

    print(f"\n{'model':16s} {'dense params':>12s} {'FLOPs/sample':>12s} {'train loss':>10s} {'eval AUC':>9s} {'eval logloss':>12s} {'seconds':>8s}")
    for name, params, flops, loss, auc, ll, secs in rows:
        print(f"{name:16s} {params:12,d} {flops:12,d} {loss:10.4f} {auc:9.4f} {ll:12.4f} {secs:8.1f}")


if __name__ == "__main__":
    main()
