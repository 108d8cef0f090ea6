"""DLRM_RankMixer.compile_dense_path: the compiled dense path equals the eager one,
forward and backward, with and without Sparse-MoE; the sparse arch stays eager.

Compiling is slow on a small CPU box, so the models are tiny and inductor (C++ codegen,
gcc) compiles one of them; the Sparse-MoE case checks Dynamo and AOTAutograd's handling
of the routers (``backend="aot_eager"``), which is where MoE differs from a plain model.
"""

import copy

import torch

from torchrec_rankmixer.data.synthetic import SyntheticClickData
from torchrec_rankmixer.models.spec import ModelSpec, TableSpec
from torchrec_rankmixer.modules.moe.statistics import collect_statistics

DATA = SyntheticClickData(num_sparse_features=3, num_embeddings=40, dense_in_features=2, seed=1)


def _model(**rankmixer: object) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(
        tables=tuple(TableSpec(f"t{i}", 8, 40, (f"f{i}",)) for i in range(3)), dense_in_features=2,
        dense_arch_layer_sizes=(8,), over_arch_layer_sizes=(8, 1),
        rankmixer_config={"d_model": 8, "num_tokens": 4, "num_layers": 1, **rankmixer},
    )
    return spec.build().train()


def _step(model: torch.nn.Module, index: int, seed: int) -> tuple:
    """One forward + backward: (logits, {parameter: grad})."""
    batch = DATA.batch(16, index)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the Sparse-MoE draws its DTSI paths
    logits = model(batch.dense_features, batch.sparse_features)
    (logits.square().mean() + logits.mean()).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(eager: tuple, compiled: tuple, atol: float) -> None:
    torch.testing.assert_close(compiled[0], eager[0], atol=atol, rtol=1e-4)
    assert compiled[1].keys() == eager[1].keys()
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=atol, rtol=1e-4, msg=name)


def test_inductor_dense_path_equals_eager_forward_and_backward() -> None:
    eager = _model()
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    compiled.compile_dense_path(dynamic=False)
    compiled.compile_dense_path()  # idempotent
    assert compiled.dense_path_compiled and not eager.dense_path_compiled
    assert list(compiled.state_dict()) == keys  # no wrapper modules, checkpoints unchanged
    for step in range(2):  # the second step reuses the compiled graph
        _assert_close(_step(eager, step, step), _step(compiled, step, step), atol=1e-5)
    assert type(compiled.sparse_arch.embedding_bag_collection).__name__ == "EmbeddingBagCollection"
    compiled.reset_dense_path()
    assert not compiled.dense_path_compiled


def test_sparse_moe_trains_compiled_and_serves_eager() -> None:
    eager = _model(use_moe=True, moe_num_experts=3)
    compiled = copy.deepcopy(eager)
    compiled.compile_dense_path(backend="aot_eager")
    for step in range(3):  # the adaptive-L1 controller moves its coefficient every step
        _assert_close(_step(eager, step, step), _step(compiled, step, step), atol=1e-5)
    assert collect_statistics(compiled) == collect_statistics(eager)  # routing statistics recorded
    batch = DATA.batch(16, 9)
    eager.eval(), compiled.eval()
    with torch.no_grad():  # eval: sparse execution, eager
        torch.testing.assert_close(compiled(batch.dense_features, batch.sparse_features),
                                   eager(batch.dense_features, batch.sparse_features))
