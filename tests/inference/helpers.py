"""Shared small models and batches for the inference tests (not a test module)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Tuple

import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.models.spec import ModelSpec, TableSpec

DATA = SyntheticClickData(num_sparse_features=4, num_embeddings=50, dense_in_features=3,
                          ids_per_feature=2, seed=3)


def small_spec(dense_in_features: int = 3, **overrides: object) -> ModelSpec:
    """4 features in 3 tables (one shared; widths 8, 8, 16), 2 ids per bag, D=16, T=3+1."""
    tables = (
        TableSpec("t_a", 8, 50, ("f0", "f1")),
        TableSpec("t_b", 8, 50, ("f2",)),
        TableSpec("t_c", 16, 50, ("f3",)),
    )
    args = dict(
        tables=tables, dense_in_features=dense_in_features,
        dense_arch_layer_sizes=(16, 8) if dense_in_features else (),
        over_arch_layer_sizes=(16, 1),
        rankmixer_config={"d_model": 16, "num_tokens": 4 if dense_in_features else 3,
                          "num_layers": 2, "num_heads": 4 if dense_in_features else 4,
                          "strict_heads": False},
        tokenization="auto",
    )
    args.update(overrides)
    return ModelSpec(**args)  # type: ignore[arg-type]


def dot_spec(**overrides: object) -> ModelSpec:
    """:func:`small_spec` with one width (8) everywhere and the default swap's interaction
    (dot products, raw and BatchNorm'd, and cross layers; 2 cross layers of rank 4 here)."""
    tables = (TableSpec("t_a", 8, 50, ("f0", "f1")), TableSpec("t_b", 8, 50, ("f2",)),
              TableSpec("t_c", 8, 50, ("f3",)))
    args: dict = {"tables": tables, "interaction": "dot_cross", **overrides}
    if args["interaction"] in ("dot", "dot_cross"):
        args = {"dot_norm": "batch", **args}
    if args["interaction"] in ("cross", "dot_cross"):
        args = {"dcn_num_layers": 2, "dcn_low_rank_dim": 4, **args}
    return small_spec(**args)


def small_model(seed: int = 0, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    return small_spec(**overrides).build().eval()


class Planted:
    """Unpickling this creates a marker file: proof that code from a file ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def artifact_inputs(batch_size: int, index: int, dense_in_features: int = 3) -> Tuple[torch.Tensor, ...]:
    """(dense, values, lengths) from the synthetic data, in artifact layout."""
    b = DATA.batch(batch_size, index)
    kjt = b.sparse_features
    dense = b.dense_features[:, :dense_in_features]
    return dense, kjt.values(), kjt.lengths().reshape(len(kjt.keys()), batch_size)


# Runs in a fresh interpreter (cwd: a temp dir, no PYTHONPATH): importing
# torchrec_rankmixer raises, and this code imports only torch and fbgemm_gpu.
FRESH_LOADER = textwrap.dedent(
    """
    import json, sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torchrec_rankmixer":
                raise ImportError("training code must not be needed")
    sys.meta_path.insert(0, _Block())
    import torch
    import fbgemm_gpu  # registers the fbgemm embedding ops
    inputs = torch.load(sys.argv[1])
    for pair in sys.argv[2:]:
        model_file, out_file = pair.split("=")
        extra = {"metadata.json": ""}
        if model_file.endswith(".pt2"):
            module = torch.export.load(model_file, extra_files=extra).module()
        else:
            module = torch.jit.load(model_file, _extra_files=extra)
        meta = json.loads(extra["metadata.json"])
        if meta["artifact"] == "aoti":  # the split artifact: the dense part beside it
            import os
            dense = torch._inductor.aoti_load_package(os.path.join(os.path.dirname(model_file), "model_dense.aoti.pt2"))
            module = lambda d, v, l, sparse=module: dense(*sparse(d, v, l))
        torch.save([module(*args) for args in inputs], out_file)
        leaked = sorted(m for m in sys.modules if m.startswith("torchrec_rankmixer"))
        print(json.dumps({"features": meta["feature_names"], "leaked": leaked,
                          "moe_execution": meta.get("moe_execution"),
                          "torchrec_imported": "torchrec" in sys.modules}))
    """
)


def run_fresh(model_files: List[str], inputs: list, tmp_path: Path) -> Tuple[list, list]:
    """Load each artifact in a fresh interpreter (torchrec_rankmixer blocked), call it on
    every ``inputs`` tuple; returns (outputs per file, one report dict per file)."""
    inputs_file = tmp_path / "inputs.pt"
    torch.save(inputs, inputs_file)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    outs, reports = [], []
    out_files = [tmp_path / f"outs{i}.pt" for i in range(len(model_files))]
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOADER, str(inputs_file)]
        + [f"{m}={o}" for m, o in zip(model_files, out_files)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.strip().splitlines()[-len(model_files):]:
        reports.append(json.loads(line))
    for f in out_files:
        outs.append(torch.load(f))
    return outs, reports
