"""``data.format=criteo_binary`` on day files written by TorchRec's own test helper:
the batches and the rank sharding are those of TorchRec's InMemoryBinaryCriteoIterDataPipe
(dlrm_main's loader), and bad files give errors naming file, row and value."""

import numpy as np
import pytest
import torch
import torchrec.datasets.criteo as trc
from torchrec.datasets.test_utils.criteo_test_utils import CriteoTest

from torchrec_rankmixer.data.binary_criteo import BinaryCriteoSource
from torchrec_rankmixer.train.config import load_config

TABLES = [7 + j for j in range(26)]


class _LocalFiles:
    """Stands in for iopath's PathManager (not a dependency): TorchRec's loader opens files
    through it."""

    def open(self, path, mode="r"):
        return open(path, mode)


def _source(prefixes, rank, world, *extra):
    cfg = load_config(overrides=[
        "data.format=criteo_binary", f"data.train_files={prefixes}", "data.batch_size=4",
        "data.dense_transform=none", "data.id_transform=mod",
        "data.table_sizes={" + ", ".join(f"C{j + 1}: {n}" for j, n in enumerate(TABLES)) + "}", *extra])
    return BinaryCriteoSource(cfg.data, rank, world)


@pytest.mark.parametrize("world", [1, 2])
def test_batches_and_sharding_are_torchrecs(monkeypatch, world):
    monkeypatch.setattr(trc, "_get_path_manager", lambda key: _LocalFiles())
    with CriteoTest._create_dataset_npys(num_rows=20, filenames=["day_0", "day_1"]) as paths:
        prefixes = [p[: -len("_dense.npy")] for p in paths if p.endswith("_dense.npy")]
        for rank in range(world):
            pipe = trc.InMemoryBinaryCriteoIterDataPipe(
                "train", [f"{p}_dense.npy" for p in prefixes], [f"{p}_sparse.npy" for p in prefixes],
                [f"{p}_labels.npy" for p in prefixes], batch_size=4, rank=rank, world_size=world, hashes=TABLES)
            want = list(pipe)
            src = _source(prefixes, rank, world)
            got = list(src.train_batches(0, rank, world, len(want) + 1))
            src.close()
            for w, g in zip(want, got):
                assert torch.equal(w.dense_features, g.dense_features)
                assert torch.equal(w.labels.float(), g.labels)
                assert w.sparse_features.keys() == [f"cat_{j}" for j in range(26)]
                assert torch.equal(w.sparse_features.values().long(), g.sparse_features.values())
                assert torch.equal(w.sparse_features.lengths(), g.sparse_features.lengths())
            assert torch.equal(got[len(want)].dense_features, got[0].dense_features)  # 40 rows: epoch 2 begins


def test_eval_split_and_errors(tmp_path):
    with CriteoTest._create_dataset_npys(num_rows=10, filenames=["day_0"]) as paths:
        prefix = paths[0][: -len("_dense.npy")]
        src = _source([prefix], 0, 1, f"data.eval_files=[{prefix}]", "data.eval_batch_size=4")
        labels = torch.cat([b.labels for b in src.eval_batch_iter(0, 1)])
        assert labels.tolist()[-2:] == [-1.0, -1.0] and len(labels) == 12  # 10 rows padded to 3 batches
    np.save(tmp_path / "d_dense.npy", np.zeros((3, 13), np.float32))
    np.save(tmp_path / "d_sparse.npy", np.zeros((3, 26), np.int32))
    np.save(tmp_path / "d_labels.npy", np.array([[0], [-1], [1]], np.int32))
    src = _source([str(tmp_path / "d")], 0, 1, "data.prefetch_batches=0")
    with pytest.raises(ValueError, match=r"d_labels.npy: row 1, column 0 has label -1"):
        next(iter(src.train_batches(0, 0, 1, 1)))
    np.save(tmp_path / "d_sparse.npy", np.zeros((3, 25), np.int32))
    with pytest.raises(ValueError, match=r"d_sparse.npy: expected .* \[N, 26\]"):
        _source([str(tmp_path / "d")], 0, 1)
    with pytest.raises(ValueError, match="does not exist"):
        _source([str(tmp_path / "nope")], 0, 1)
    with pytest.raises(ValueError, match="dense_transform"):
        load_config(overrides=["data.format=criteo_binary", "data.train_files=[x]"])
