"""upgrade_v1: version-1 spec dicts in version-2 form."""

from torchrec_rankmixer.models.spec_upgrade import upgrade_v1


def test_upgrade_renames_kernels_and_resolves_tokenization():
    v1 = {"rankmixer_config": {"ffn_kernel": "loop", "d_model": 8}, "tokenization": None,
          "feature_groups": {"user": ["a", "b"]}, "task": "ctr", "over_arch_layer_sizes": [8, 1]}
    v2 = upgrade_v1(v1)
    assert v2["rankmixer_config"] == {"kernel": "reference", "d_model": 8}
    assert v2["tokenization"] == "groups" and v2["over_arch_layer_sizes"] == [8, 1]
    assert v1["rankmixer_config"] == {"ffn_kernel": "loop", "d_model": 8}  # the input is not changed
    assert upgrade_v1({"rankmixer_config": {"ffn_kernel": "custom"}})["rankmixer_config"] == {"kernel": "custom"}


def test_upgrade_moves_esmm_tower_sizes():
    v2 = upgrade_v1({"task": "esmm", "over_arch_layer_sizes": [32, 16, 1], "tokenization": "split"})
    assert v2["tower_layer_sizes"] == [32, 16] and v2["over_arch_layer_sizes"] is None
    assert v2["tokenization"] == "split" and v2["rankmixer_config"] == {}
