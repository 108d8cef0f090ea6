"""Data throughput (issue 15): the readers through the product's batch path, against
pyarrow's raw ``read_csv`` of the same file (the ceiling) and the per-line parsers they
replace; training fed from files vs from memory; peak memory while reading a file much
larger than the prefetch window. One run, measured side by side.

Files (generated, ``--rows`` rows each): Criteo TSV (label, 13 ints with 10% blanks, 26
8-digit hex ids with 5% blanks), a CSV (label, 8 integer ids, 2 text ids, 3 floats) and
libsvm (label, 10 ``id:1`` tokens), plus the same Criteo rows as TorchRec binary days.

- reader rows/s: one pass of ``train_batches`` of the source ``rankmixer-train`` builds
  (vectorised reader, background prefetch, hashing, ``log1p``, KJT batches of
  ``data.batch_size``), 1 intra-op thread as the trainer sets on CPU.
- ceiling: ``pyarrow.csv.read_csv`` of the same file with default options (all cores).
- old parser: the per-line parser alone (``CriteoParser``, ...) on the first
  ``--old-rows`` lines, and the same parser through the batch path
  (``data.text_reader=reference``).
- training: ``Trainer.fit`` of the default model (``model.*`` defaults, batch 256) on
  the Criteo file, fed from the file (``FileSource``) vs from the same batches held in
  memory; samples/s over ``--train-steps`` steps, best of two rounds, interleaved.
- memory: peak RSS (``VmHWM``) of a fresh process reading the whole Criteo file through
  ``train_batches``, and of one reading a tenth of it.

Each number is the best of ``--rounds`` rounds (interference only adds time).

Usage::

    python benchmarks/bench_data.py --rows 1000000 --out bench_data.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from torchrec_rankmixer.data.sources import FileSource, make_source  # noqa: E402
from torchrec_rankmixer.data.text import CriteoParser, CsvParser, LibsvmParser  # noqa: E402
from torchrec_rankmixer.train.config import load_config  # noqa: E402

CSV_SPARSE = [f"u{i}" for i in range(8)] + ["city", "device"]
CSV_DENSE = ["x0", "x1", "x2"]


def _hex(rng: np.random.Generator, n: int) -> pa.Array:
    data = rng.integers(0, 2**32, n, dtype=np.uint64).astype(">u4").tobytes().hex().encode()
    offsets = (np.arange(n + 1, dtype=np.int32) * 8).tobytes()
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _with_blanks(arr: pa.Array, rng: np.random.Generator, frac: float) -> pa.Array:
    return pc.if_else(pa.array(rng.random(len(arr)) < frac), pa.scalar("", pa.string()), pc.cast(arr, pa.string()))


def _write(table: pa.Table, path: str, delimiter: str, header: bool) -> None:
    with open(path, "wb") as f:
        if header:
            f.write((delimiter.join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none"))


def generate(folder: str, n: int, seed: int = 0) -> Dict[str, str]:
    """The benchmark's files (Criteo TSV, CSV, libsvm, Criteo binary day prefix)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    cols = {"label": pa.array(labels)}
    dense = rng.integers(0, 1000, (n, 13))
    sparse = rng.integers(0, 2**32, (n, 26), dtype=np.uint64)
    for i in range(13):
        cols[f"I{i + 1}"] = _with_blanks(pa.array(dense[:, i]), rng, 0.1)
    for i in range(26):
        col = _hex(rng, n)
        sparse[:, i] = np.frombuffer(bytes.fromhex(col.buffers()[2].to_pybytes().decode()), ">u4")
        cols[f"C{i + 1}"] = _with_blanks(col, rng, 0.05)
    paths = {"criteo": os.path.join(folder, "day_0.tsv")}
    _write(pa.table(cols), paths["criteo"], "\t", False)
    prefix = os.path.join(folder, "day_0")
    np.save(f"{prefix}_dense.npy", np.log(dense.astype(np.float32) + 1))
    np.save(f"{prefix}_sparse.npy", sparse.astype(np.int64))
    np.save(f"{prefix}_labels.npy", labels.reshape(-1, 1).astype(np.int32))
    paths["criteo_binary"] = prefix
    csv = {"label": pa.array(labels)}
    for j, c in enumerate(CSV_SPARSE[:8]):
        csv[c] = pa.array(rng.integers(0, 10 ** (3 + j % 4), n))
    csv["city"] = pc.binary_join_element_wise("city", pc.cast(pa.array(rng.integers(0, 500, n)), pa.string()), "")
    csv["device"] = _with_blanks(pc.binary_join_element_wise(
        "d", pc.cast(pa.array(rng.integers(0, 50, n)), pa.string()), ""), rng, 0.05)
    for c in CSV_DENSE:
        csv[c] = _with_blanks(pa.array(np.round(rng.random(n) * 100, 3)), rng, 0.05)
    paths["csv"] = os.path.join(folder, "train.csv")
    _write(pa.table(csv), paths["csv"], ",", True)
    svm = {"label": pa.array(labels)}
    for j in range(10):
        svm[f"t{j}"] = pc.binary_join_element_wise(pc.cast(pa.array(rng.integers(0, 10**6, n)), pa.string()), "1", ":")
    paths["libsvm"] = os.path.join(folder, "train.libsvm")
    _write(pa.table(svm), paths["libsvm"], " ", False)
    return paths


def _head(path: str, rows: int, header: bool) -> str:
    """A file of the first ``rows`` rows of ``path`` (for the slow per-line baselines)."""
    out = f"{path}.head{rows}"
    with open(path, "rb") as src, open(out, "wb") as dst:
        dst.writelines(line for _, line in zip(range(rows + header), src))
    return out


def overrides(fmt: str, path: str, *extra: str) -> List[str]:
    cols = {"csv": [f"data.sparse_columns=[{', '.join(CSV_SPARSE)}]", f"data.dense_columns=[{', '.join(CSV_DENSE)}]"],
            "libsvm": [f"data.sparse_columns=[{', '.join(f't{j}' for j in range(10))}]"],
            "criteo_binary": ["data.dense_transform=none"]}.get(fmt, [])
    return [f"data.format={fmt}", f"data.train_files=[{path}]", *cols, *extra]


def best(fn: Callable[[], float], rounds: int) -> float:
    return max(fn() for _ in range(rounds))


def reader_rate(fmt: str, path: str, rows: int, *extra: str) -> float:
    """rows/s of one pass of train_batches (batch 256)."""
    cfg = load_config(overrides=overrides(fmt, path, *extra))
    src = make_source(cfg.data, False, 0, 1)
    num = rows // cfg.data.batch_size
    t = time.perf_counter()
    for _ in src.train_batches(0, 0, 1, num):
        pass
    dt = time.perf_counter() - t
    src.close()
    return num * cfg.data.batch_size / dt


def raw_rate(fmt: str, path: str, rows: int) -> float:
    t = time.perf_counter()
    opts = {"csv": {}, "criteo": {"parse_options": pacsv.ParseOptions(delimiter="\t"),
                                  "read_options": pacsv.ReadOptions(autogenerate_column_names=True)},
            "libsvm": {"parse_options": pacsv.ParseOptions(delimiter=" "),
                       "read_options": pacsv.ReadOptions(autogenerate_column_names=True)}}[fmt]
    table = pacsv.read_csv(path, **opts)
    assert table.num_rows == rows
    return rows / (time.perf_counter() - t)


def old_parser_rate(fmt: str, path: str, rows: int) -> float:
    with open(path) as f:
        header = f.readline().rstrip("\n").split(",") if fmt == "csv" else None
        parser = {"criteo": lambda: CriteoParser(),
                  "csv": lambda: CsvParser(header, ["label"], CSV_SPARSE, CSV_DENSE, ","),
                  "libsvm": lambda: LibsvmParser([f"t{j}" for j in range(10)])}[fmt]()
        lines = [f.readline() for _ in range(rows)]
    t = time.perf_counter()
    for line in lines:
        parser(line)
    return rows / (time.perf_counter() - t)


class MemorySource:
    """The same prepared batches, held in memory (the 'from memory' feed)."""

    def __init__(self, inner: FileSource, num: int) -> None:
        self.inner = inner
        self.batches = list(inner.train_batches(0, 0, 1, num))
        inner.close()
        self.dense_in_features, self.user_feature = inner.dense_in_features, inner.user_feature

    def table_configs(self, dim: int):  # noqa: ANN201
        return self.inner.table_configs(dim)

    def train_batches(self, cursor: int, rank: int, world: int, num: int) -> Iterator:
        return iter(self.batches[cursor:cursor + num])

    def eval_batch_iter(self, rank: int, world: int) -> Iterator:
        return iter(())

    def malformed_report(self) -> Dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def train_rate(path: str, steps: int, memory: bool, out_dir: str) -> float:
    import torch.distributed as dist

    from torchrec_rankmixer.train.loop import Trainer

    cfg = load_config(overrides=overrides("criteo", path, f"train.steps={steps}", "train.eval_every=0",
                                          "train.progress_bar=false", "run.save_final=false", "run.plots=false",
                                          "run.tensorboard=false", f"run.out_dir={out_dir}"))
    trainer = Trainer(cfg)
    if memory:
        trainer.source = MemorySource(trainer.source, steps)
    t = time.perf_counter()
    trainer.fit()
    dt = time.perf_counter() - t
    if dist.is_initialized():
        dist.barrier()  # neither rank tears gloo down while the other still uses it
        dist.destroy_process_group()
    return steps * cfg.data.batch_size / dt


def peak_rss_mb(path: str, rows: int, *extra: str) -> Dict[str, float]:
    """In a fresh process: RSS once the source is built, and the peak RSS (``VmHWM``) after
    reading the whole file through train_batches (``ru_maxrss`` would carry the parent's
    peak across ``exec``)."""
    code = (f"import sys, torch; sys.path.insert(0, {ROOT!r}); torch.set_num_threads(1)\n"
            "from benchmarks.bench_data import overrides\n"
            "from torchrec_rankmixer.train.config import load_config\n"
            "from torchrec_rankmixer.data.sources import make_source\n"
            "mb = lambda key: [int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(key)][0]\n"
            f"cfg = load_config(overrides=overrides('criteo', {path!r}, *{list(extra)!r}))\n"
            "src = make_source(cfg.data, False, 0, 1)\n"
            "before = mb('VmRSS')\n"
            f"for _ in src.train_batches(0, 0, 1, {rows} // 256): pass\n"
            "src.close(); print(before, mb('VmHWM'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    before, peak = map(float, out.stdout.split()[-2:])
    return {"rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--old-rows", type=int, default=100_000)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="bench_data.json")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the trainer sets on CPU
    res: Dict[str, object] = {"rows": args.rows}
    with tempfile.TemporaryDirectory() as folder:
        t = time.perf_counter()
        paths = generate(folder, args.rows)
        res["file_mb"] = {f: round(os.path.getsize(p) / 2**20, 1) for f, p in paths.items() if f != "criteo_binary"}
        print(f"generated in {time.perf_counter() - t:.0f} s: {res['file_mb']}", flush=True)
        for fmt in ("criteo", "csv", "libsvm"):
            p, r = paths[fmt], {}
            head = _head(p, args.old_rows, fmt == "csv")
            for _ in range(args.rounds):  # interleaved rounds, best of each
                r["raw_read_csv"] = max(r.get("raw_read_csv", 0), raw_rate(fmt, p, args.rows))
                r["product"] = max(r.get("product", 0), reader_rate(fmt, p, args.rows))
                r["old_parser"] = max(r.get("old_parser", 0), old_parser_rate(fmt, head, args.old_rows))
                r["old_parser_batch_path"] = max(r.get("old_parser_batch_path", 0),
                                                 reader_rate(fmt, head, args.old_rows, "data.text_reader=reference"))
            r["vs_raw"] = r["product"] / r["raw_read_csv"]
            r["vs_old_parser"] = r["product"] / r["old_parser"]
            r["vs_old_batch_path"] = r["product"] / r["old_parser_batch_path"]
            res[fmt] = {k: round(v, 3 if k.startswith("vs") else 0) for k, v in r.items()}
            print(fmt, res[fmt], flush=True)
        res["criteo_binary"] = {"product": round(best(lambda: reader_rate(
            "criteo_binary", paths["criteo_binary"], args.rows), args.rounds))}
        print("criteo_binary", res["criteo_binary"], flush=True)
        train: Dict[str, float] = {}
        for _ in range(args.rounds):
            for name, memory in (("from_memory", True), ("from_files", False)):
                with tempfile.TemporaryDirectory() as out_dir:
                    train[name] = max(train.get(name, 0), train_rate(paths["criteo"], args.train_steps, memory, out_dir))
        train["ratio"] = train["from_files"] / train["from_memory"]
        res["training_samples_per_s"] = {k: round(v, 3 if k == "ratio" else 0) for k, v in train.items()}
        print("training", res["training_samples_per_s"], flush=True)
        tenth = _head(paths["criteo"], args.rows // 10, False)
        res["memory"] = {"whole_file": {"file_mb": res["file_mb"]["criteo"], **peak_rss_mb(paths["criteo"], args.rows)},
                         "tenth": {"file_mb": round(os.path.getsize(tenth) / 2**20, 1),
                                   **peak_rss_mb(tenth, args.rows // 10)}}
        print("memory", res["memory"], flush=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
