"""TorchScript fallback: TorchRec's FX tracer, then ``torch.jit.script``.

The FX trace resolves Python-level control flow (config flags, kernel choice) and keeps
TorchRec's wrapped KJT/KeyedTensor helpers as calls; the model's own ``torch.fx.wrap``
helper ``_ordered_values`` uses a comprehension TorchScript rejects, so its call nodes
are pointed at the scriptable twin below (same behaviour, tested against it).
Sparse-MoE calls (``ops.moe.moe_experts_sparse``, an FX leaf: its shapes depend on the
data) are pointed at :func:`~torchrec_rankmixer.ops.moe.moe_experts_sparse_resolved`,
its TorchScript-able body, with the kernel resolved at export time.
"""

from typing import Dict, List

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedTensor

from torchrec_rankmixer.features import tokenizer as _tokenizer
from torchrec_rankmixer.ops import moe as _moe_ops


def ordered_values_scriptable(sparse: KeyedTensor, expected_keys: List[str]) -> torch.Tensor:
    """TorchScript-compatible twin of ``features.tokenizer._ordered_values``.

    Returns the KeyedTensor values [B, sum(dims)] with columns in ``expected_keys`` order.

    Example::

        >>> kt = KeyedTensor(keys=["b", "a"], length_per_key=[1, 2],
        ...                  values=torch.tensor([[1.0, 2.0, 3.0]]))
        >>> ordered_values_scriptable(kt, ["a", "b"]).tolist()
        [[2.0, 3.0, 1.0]]
    """
    keys = sparse.keys()
    if keys == expected_keys:
        return sparse.values()
    by_key: Dict[str, torch.Tensor] = sparse.to_dict()
    parts: List[torch.Tensor] = []
    for k in expected_keys:
        if k not in by_key:
            raise ValueError("embedding output lacks feature " + k)
        parts.append(by_key[k])
    return torch.cat(parts, dim=1)


torch.fx.wrap("ordered_values_scriptable")


def _point_at_scriptable_moe(node: torch.fx.Node) -> None:
    """Retarget a traced ``moe_experts_sparse(x, gates, w1, b1, w2, b2, kernel=...)`` call
    to ``moe_experts_sparse_resolved`` (kernel resolved for a CPU float input)."""
    kernel = node.kwargs.get("kernel", "auto")
    if len(node.args) > 6:
        kernel = node.args[6]
    if not isinstance(kernel, str):
        raise ValueError(f"sparse MoE kernel ({kernel!r}) must be a constant string when scripting")
    chosen = _moe_ops.choose_sparse_kernel(torch.empty(0), kernel)
    node.target = _moe_ops.moe_experts_sparse_resolved
    node.args = tuple(node.args[:6]) + (chosen,)
    node.kwargs = {}


def script_inference_module(module: nn.Module) -> torch.jit.ScriptModule:
    """FX-trace ``module`` with TorchRec's tracer and script the result.

    Args:
        module: a :class:`RankMixerInferenceModule` (or any FX-traceable module).

    Example::

        >>> script_inference_module(nn.Linear(2, 1))(torch.zeros(3, 2)).shape
        torch.Size([3, 1])
    """
    import torchrec.fx

    graph_module = torchrec.fx.symbolic_trace(module)
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is _tokenizer._ordered_values:
            node.target = ordered_values_scriptable
        if node.op == "call_function" and node.target is _moe_ops.moe_experts_sparse:
            _point_at_scriptable_moe(node)
    graph_module.recompile()
    return torch.jit.script(graph_module)
