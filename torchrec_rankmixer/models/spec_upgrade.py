"""Reading older ModelSpec dicts: version 1 (0.1's artifacts and model files) in
version-2 form, so :meth:`~torchrec_rankmixer.models.spec.ModelSpec.from_dict` reads both."""

from typing import Any, Dict, Mapping


def upgrade_v1(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A version-1 spec dict (0.1) in version-2 form: ``ffn_kernel`` -> ``kernel``
    (``loop`` -> ``reference``, ``bmm`` -> ``batched``); ESMM's ``over_arch_layer_sizes``
    (tower sizes + [1]) -> ``tower_layer_sizes``; ``tokenization: null`` resolved.

    Example::

        >>> v1 = {"tables": [], "dense_in_features": 0, "dense_arch_layer_sizes": [],
        ...       "over_arch_layer_sizes": [8, 1], "task": "esmm", "tokenization": None,
        ...       "feature_groups": None, "rankmixer_config": {"ffn_kernel": "bmm"}}
        >>> v2 = upgrade_v1(v1)
        >>> v2["tower_layer_sizes"], v2["over_arch_layer_sizes"], v2["rankmixer_config"]
        ([8], None, {'kernel': 'batched'})
    """
    out = dict(data)
    config = dict(out.get("rankmixer_config", {}))
    if "ffn_kernel" in config:
        old = config.pop("ffn_kernel")
        config["kernel"] = {"loop": "reference", "bmm": "batched"}.get(old, old)
    out["rankmixer_config"] = config
    if out.get("task") == "esmm":
        out["tower_layer_sizes"] = list(out.pop("over_arch_layer_sizes", [1]))[:-1]
        out["over_arch_layer_sizes"] = None
    if out.get("tokenization") is None:
        out["tokenization"] = "groups" if out.get("feature_groups") else "auto"
    return out
