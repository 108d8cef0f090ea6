"""ManagedCollisionRemapper: equal to TorchRec's unsharded ManagedCollisionCollection,
eviction, bad settings, checkpoint round trip, and bit-identical state on 2 real processes."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.mc_modules import ManagedCollisionCollection, MCHManagedCollisionModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_rankmixer.features.prep import hash_ids
from torchrec_rankmixer.features.managed_collision import (
    ManagedCollisionRemapper,
    gather_kjt,
    local_values,
    make_eviction_policy,
)

from tests.train.helpers import destroy_group, free_port

BIG = 2**62


def _tables(zch=(16, 8)):
    return [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=4, num_embeddings=z, feature_names=[n])
            for n, z in zip("ab", zch)]


def _batch(seed: int, batch_size: int = 6, keys=("a", "b"), vocab: int = 40, fixed: bool = False) -> KeyedJaggedTensor:
    """Raw 64-bit ids (power-law over ``vocab`` distinct ids spread over int64), 0..2 per bag
    (``fixed``: the same bag sizes in every batch; TorchRec's own module drops ids of a batch
    larger than 1.25x its first one)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 3, (len(keys) * batch_size,), generator=g)
    if fixed:
        lengths = torch.arange(len(keys) * batch_size) % 3
    ranks = (torch.rand(int(lengths.sum()), generator=g) ** 3 * vocab).long()
    values = ranks * 7_919_000_000_013 - BIG  # distinct, negative and positive int64 ids
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths.to(torch.int32), stride=batch_size)


def _reference(tables, policy="distance_lfu", interval=1, hash_size=None):
    """TorchRec's own unsharded collection with the same settings."""
    mods = {t.name: MCHManagedCollisionModule(
        zch_size=t.num_embeddings, device=torch.device("cpu"),
        eviction_policy=make_eviction_policy(policy, 1.0), eviction_interval=interval,
        input_hash_size=hash_size or (2**63) - 1,
        input_hash_func=(lambda v, n: hash_ids(v, n)) if hash_size else None) for t in tables}
    return ManagedCollisionCollection(mods, tables)


def _state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("policy,interval,hash_size", [
    ("distance_lfu", 1, None), ("lfu", 2, None), ("lru", 3, None), ("distance_lfu", 1, 1000)])
def test_matches_torchrec_collection(policy, interval, hash_size):
    tables = _tables()
    ours = ManagedCollisionRemapper(tables, policy, interval, input_hash_size=hash_size)
    ref = _reference(tables, policy, interval, hash_size)
    for step in range(8):
        kjt = _batch(step, fixed=True)
        got, want = ours(kjt), ref(kjt)
        assert torch.equal(got.values(), want.values()), step
        assert torch.equal(got.lengths(), kjt.lengths())
    assert int(ours.collection.open_slots()["t_b"]) == 0  # 40 ids > 7 slots: evictions happened
    ref_state = {f"collection.{k}": v for k, v in ref.state_dict().items()}
    for k, v in _state(ours).items():
        assert torch.equal(v, ref_state[k]), k
    out = ours(_batch(99, fixed=True)).values()
    ref(_batch(99, fixed=True))
    assert bool(((out >= 0) & (out < 16)).all())
    ours.eval(), ref.eval()  # read-only: same answers, state untouched
    before = _state(ours)
    assert torch.equal(ours(_batch(100)).values(), ref(_batch(100)).values())  # any size: no profiling
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_unmanaged_features_pass_through_in_their_order():
    ours = ManagedCollisionRemapper(_tables()[:1])  # manages "a" only
    kjt = _batch(3, keys=("x", "a", "b"))
    out = ours(kjt)
    assert out.keys() == ["x", "a", "b"] and torch.equal(out.lengths(), kjt.lengths())
    for key in ("x", "b"):
        assert torch.equal(out[key].values(), kjt[key].values())
    assert bool((out["a"].values() < 16).all()) and not torch.equal(out["a"].values(), kjt["a"].values())
    with pytest.raises(ValueError, match=r"lack the managed feature\(s\) \['a'\]"):
        ours(_batch(3, keys=("x", "b")))


def test_input_kjt_is_left_unchanged():
    """The remap must not write into the input KJT's cached per-key dict (eval batches are
    cached and remapped again at every evaluation)."""
    ours = ManagedCollisionRemapper(_tables())
    ours(_batch(1))
    ours.eval()
    kjt = _batch(2)
    raw_a = kjt["a"].values().clone()  # fills the KJT's per-key cache
    first = ours(kjt)
    assert torch.equal(kjt["a"].values(), raw_a)
    second = ours(kjt)
    assert torch.equal(first.values(), second.values())
    assert torch.equal(first["a"].values(), first.values()[: raw_a.numel()])


def _one(ids):
    return KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor(ids), torch.ones(len(ids), dtype=torch.int32))


def test_eviction_keeps_frequent_ids_and_admits_hot_newcomers():
    """zch 4: 3 id slots + the shared slot 3. LFU keeps the most frequent ids."""
    remap = ManagedCollisionRemapper(_tables((4,))[:1], eviction_policy="lfu")
    remap(_one([10, 10, 10, 20, 20, 30]))  # counts 10:3, 20:2, 30:1
    assert remap.last_evictions == {}  # free rows filled: nothing evicted
    remap.eval()
    slots = remap(_one([10, 20, 30, 40])).values().tolist()
    assert sorted(slots[:3]) == [0, 1, 2] and slots[3] == 3  # 40 unseen: shared slot
    remap.train()
    remap(_one([40] * 5))  # 40 (count 5) evicts the least frequent id, 30
    assert {k: v.tolist() for k, v in remap.last_evictions.items()} == {"t_a": [slots[2]]}
    remap.eval()
    after = remap(_one([10, 20, 30, 40])).values().tolist()
    assert after[:2] == slots[:2]  # kept ids keep their slot
    assert after[2] == 3  # 30 was evicted: now the shared slot
    assert after[3] == slots[2]  # 40 took 30's slot
    assert int(remap.collection.open_slots()["t_a"]) == 0


def test_larger_later_batch_is_profiled_in_full():
    """TorchRec sizes the history from the first batch; a later batch 10x larger must not
    lose ids (all 30 new ids fit into the 63 slots and are admitted)."""
    remap = ManagedCollisionRemapper(_tables((64,))[:1])
    remap(_one([1, 2, 3]))
    remap(_one(list(range(100, 130))))
    remap.eval()
    assert bool((remap(_one(list(range(100, 130)))).values() < 63).all())


def test_bad_settings_raise():
    t = _tables()
    with pytest.raises(ValueError, match=r"eviction_policy \('lifo'\)"):
        ManagedCollisionRemapper(t, eviction_policy="lifo")
    with pytest.raises(ValueError, match=r"eviction_interval \(0\) must be an int >= 1"):
        ManagedCollisionRemapper(t, eviction_interval=0)
    with pytest.raises(ValueError, match=r"decay_exponent \(0.0\) must be > 0"):
        ManagedCollisionRemapper(t, decay_exponent=0.0)
    with pytest.raises(ValueError, match=r"input_hash_size \(1\)"):
        ManagedCollisionRemapper(t, input_hash_size=1)
    with pytest.raises(ValueError, match=r"num_embeddings \(1\) < 2"):
        ManagedCollisionRemapper(_tables((1, 8)))
    with pytest.raises(ValueError, match="tables is empty"):
        ManagedCollisionRemapper([])
    with pytest.raises(ValueError, match="eviction_policy"):
        make_eviction_policy("mru", 1.0)


@pytest.mark.parametrize("interval", [1, 2])
def test_state_dict_round_trip_continues_exactly(interval):
    """Save after 4 steps (a multiple of the interval), load into a fresh remapper: the next
    steps give the same ids and state as the original continuing."""
    a = ManagedCollisionRemapper(_tables(), eviction_interval=interval)
    for step in range(4):
        a(_batch(step))
    b = ManagedCollisionRemapper(_tables(), eviction_interval=interval)
    b(_batch(50))  # b has its own history and iteration count: loading must reset them
    b.load_state_dict(a.state_dict())
    for step in range(4, 9):
        assert torch.equal(a(_batch(step)).values(), b(_batch(step)).values()), step
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_local_values_slices_each_rank():
    counts = torch.tensor([[2, 1], [0, 3]])  # key-major: k0r0 k0r1 k1r0 k1r1
    vals = torch.tensor([1, 2, 3, 4, 5, 6])
    assert local_values(vals, counts, 0).tolist() == [1, 2]
    assert local_values(vals, counts, 1).tolist() == [3, 4, 5, 6]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        remap = ManagedCollisionRemapper(_tables())
        outs = []
        for step in range(5):
            local = _batch(10 * step + rank, batch_size=4 + rank)  # ranks differ in ids and size
            glob, _ = gather_kjt(local, None)
            outs.append((local, remap(local).values(), glob))
        torch.save({"state": _state(remap), "outs": outs}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_identical_state_equal_to_the_global_batch():
    out_dir = tempfile.mkdtemp()
    destroy_group()  # fork copies this process's state: no default group may be inherited
    # fork (not spawn): the children reuse this process's imports; 20 s -> under 1 s here
    mp.start_processes(_worker, args=(2, free_port(), out_dir), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    ref = _reference(_tables())  # one process fed the global batches (rank 0's samples first)
    for step, ((l0, o0, glob), (l1, o1, glob1)) in enumerate(zip(r0["outs"], r1["outs"])):
        assert torch.equal(glob.values(), glob1.values()) and glob.stride() == 9
        want = ref(glob)
        expect0, expect1 = [], []
        for key in ("a", "b"):  # rank 0's samples come first in every key of the global batch
            n0 = l0[key].values().numel()
            expect0.append(want[key].values()[:n0])
            expect1.append(want[key].values()[n0:])
        assert torch.equal(o0, torch.cat(expect0)), step
        assert torch.equal(o1, torch.cat(expect1)), step
    ref_state = {f"collection.{k}": v for k, v in ref.state_dict().items()}
    for k, v in r0["state"].items():
        assert torch.equal(v, ref_state[k]), k
