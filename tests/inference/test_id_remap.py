"""RawIdRemap (the frozen managed-collision mapping inside an artifact): equal to the
trained remapper in eval mode, its errors, and export of a managed-collision run whose
artifact takes raw 64-bit ids."""

import json
import os

import pytest
import torch
import yaml
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.features.managed_collision import ManagedCollisionRemapper
from torchrec_rankmixer.inference.from_run import export_from_run_dir, load_run_id_remap, load_run_model
from torchrec_rankmixer.inference.id_remap import RawIdRemap
from torchrec_rankmixer.inference.predictor import Predictor
from torchrec_rankmixer.inference.quantize import QuantizationOptions
from torchrec_rankmixer.train.config import load_config
from torchrec_rankmixer.train.loop import Trainer

from tests.train.helpers import destroy_group, tiny

BIG = 2**62


def _kjt(seed: int, keys=("x", "a", "b"), batch: int = 5) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (len(keys) * batch,), generator=g)
    values = (torch.rand(int(lengths.sum()), generator=g) ** 2 * 30).long() * 1_000_003_000_017 - BIG
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths.to(torch.int32), stride=batch)


@pytest.mark.parametrize("hash_size", [None, 64])
def test_equals_trained_remapper_in_eval_mode(hash_size):
    tables = [EmbeddingBagConfig(name="t_ab", embedding_dim=4, num_embeddings=12, feature_names=["a", "b"])]
    trained = ManagedCollisionRemapper(tables, input_hash_size=hash_size)
    for step in range(6):
        trained(_kjt(step))
    frozen = RawIdRemap.from_remapper(trained, ["x", "a", "b"])  # x is not managed
    assert frozen.raw_id_features == ["a", "b"]
    trained.eval()
    for seed in (10, 11):
        kjt = _kjt(seed)
        want = trained(kjt).values()
        got = frozen(kjt.values(), kjt.lengths().view(3, -1))
        assert torch.equal(got, want)
        assert torch.equal(got[: kjt["x"].values().numel()], kjt["x"].values())  # x untouched
    assert int(frozen(torch.tensor([7, 2**62 + 5, 7]), torch.ones(3, 1, dtype=torch.int32))[1]) == 11  # unseen: last row


def test_bad_mappings_raise():
    ids, rows = torch.tensor([1, 5, 2**63 - 1]), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"managed features \['z'\] are not among"):
        RawIdRemap(["a"], {"z": (ids, rows)})
    with pytest.raises(ValueError, match="must be sorted"):
        RawIdRemap(["a"], {"a": (ids.flip(0), rows)})
    with pytest.raises(ValueError, match=r"must be \[Z\], Z >= 2"):
        RawIdRemap(["a"], {"a": (ids, rows[:2])})
    assert torch.equal(RawIdRemap(["a"], {})(ids, torch.ones(1, 3)), ids)  # nothing managed


def _csv(path) -> None:
    g = torch.Generator().manual_seed(1)
    lines = ["label,user,item,ctx,x"]
    for _ in range(64):
        u, i = (torch.rand(2, generator=g) ** 2 * 25).long().tolist()
        lines.append(f"{int((u + i) % 3 == 0)},{10**15 + 7919 * u},{-(2**60) + i},{u % 5},{i / 10}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    """A 4-step managed-collision CSV run (raw 64-bit ids, 8-row tables: evictions) with a
    bucketised dense column, whose ``x_bucket`` feature is not managed."""
    out = tmp_path_factory.mktemp("mcrun")
    train = out / "train.csv"
    _csv(train)
    destroy_group()
    cfg = load_config(overrides=tiny(
        out, "data.format=csv", f"data.train_files=[{train}]", "data.sparse_columns=[user, item, ctx]",
        "data.dense_columns=[x]", "data.bucket_boundaries={x: [0.5, 1.0]}", "data.num_embeddings=8",
        "data.id_transform=managed_collision", "train.steps=4", "train.eval_every=0",
        "run.checkpoint_every=4", "run.name=mc", "run.plots=false"))
    Trainer(cfg).fit()
    destroy_group()
    return os.path.join(out, "mc")


def test_export_of_a_managed_collision_run_takes_raw_ids(mc_run, tmp_path):
    """Raw 64-bit ids and the raw dense column ``x`` in (bucketised inside the artifact)."""
    result, _ = export_from_run_dir(mc_run, tmp_path / "art", QuantizationOptions(table_dtype="fp32"))
    assert result.metadata["raw_id_features"] == ["user", "item", "ctx"]
    assert result.metadata["feature_names"] == ["user", "item", "ctx"]
    assert result.metadata["dense_feature_names"] == ["x"]
    predictor = Predictor(result.path)
    model, _, _ = load_run_model(mc_run)
    remap = load_run_id_remap(mc_run)
    assert not remap.training
    sparse = {"user": [10**15, 10**15 + 7919, -3], "item": [-(2**60), -(2**60) + 1, 2**62],
              "ctx": [0, 1, 12345]}  # -3, 2**62, 12345: never seen
    got = predictor.predict(sparse, dense=[[0.2], [1.5], [0.7]])  # x -> buckets 0, 2, 1
    prepared = dict(sparse, x_bucket=[0, 2, 1])
    kjt = KeyedJaggedTensor.from_lengths_sync(
        list(prepared), torch.tensor([v for f in prepared for v in prepared[f]]), torch.ones(12, dtype=torch.int32))
    remapped = remap(kjt)
    assert remapped["user"].values()[2] == 7 and remapped["item"].values()[2] == 7  # the shared row
    with torch.no_grad():
        want = model(torch.zeros(3, 0), remapped)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="dense column 'x' has a non-finite value .* at row 1"):  # raw x is checked
        predictor.predict(sparse, dense=[[0.2], [float("nan")], [0.7]])

    # without the feature preparation the artifact takes prepared inputs, as before
    bare, _ = export_from_run_dir(mc_run, tmp_path / "bare", QuantizationOptions(table_dtype="fp32"),
                                  preprocessing=False, artifact="export")
    assert bare.metadata["feature_names"] == ["user", "item", "ctx", "x_bucket"]
    assert bare.metadata["preprocessing"] is None
    bare_predictor = Predictor(bare.path)
    torch.testing.assert_close(bare_predictor.predict(prepared), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="x_bucket"):  # unmanaged features are still range-checked
        bare_predictor.predict(dict(prepared, x_bucket=[0, 2, 3]))


def test_run_without_mapping_is_rejected(mc_run, tmp_path):
    """A config edited to managed_collision after training: the checkpoint has no mapping."""
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(mc_run, run)
    cfg = yaml.safe_load(open(run / "config.yaml"))
    assert load_run_id_remap(str(run)) is not None
    cfg["data"]["id_transform"] = "hash"
    yaml.safe_dump(cfg, open(run / "config.yaml", "w"))
    assert load_run_id_remap(str(run)) is None  # hash runs have no remap
    cfg["data"]["id_transform"] = "managed_collision"
    cfg["data"]["sparse_columns"] = ["user", "item", "ctx", "city"]  # a table the run never had
    yaml.safe_dump(cfg, open(run / "config.yaml", "w"))
    spec = json.load(open(run / "spec.json"))
    spec["tables"].append(dict(spec["tables"][0], name="t_city", feature_names=["city"]))
    json.dump(spec, open(run / "spec.json", "w"))
    with pytest.raises(ValueError, match="lacks the id mapping"):
        load_run_id_remap(str(run))
