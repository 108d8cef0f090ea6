import pytest

from torchrec_rankmixer.features.grouping import plan_tokens

DIMS = {"user_id": 4, "user_age": 2, "item_id": 4, "item_cat": 2, "ctx": 3}


def test_explicit_groups() -> None:
    plan = plan_tokens(DIMS, None, {"user": ["user_id", "user_age"], "item": ["item_cat", "item_id"], "ctx": ["ctx"]})
    assert plan.names == ("user", "item", "ctx")
    assert plan.columns[0] == (0, 1, 2, 3, 4, 5)
    assert plan.columns[1] == (10, 11, 6, 7, 8, 9)  # listed order: item_cat then item_id
    assert plan.widths == (6, 6, 3)


def test_auto_grouping_uses_every_feature_once_in_order() -> None:
    plan = plan_tokens(DIMS, 3)
    assert plan.features == (("user_id", "user_age"), ("item_id", "item_cat"), ("ctx",))
    flat = [f for group in plan.features for f in group]
    assert flat == list(DIMS)
    assert sorted(c for cols in plan.columns for c in cols) == list(range(15))


def test_split_eq2_even_chunks() -> None:
    plan = plan_tokens(DIMS, 4, mode="split")
    assert plan.widths == (4, 4, 4, 3)
    assert [c for cols in plan.columns for c in cols] == list(range(15))
    grouped = plan_tokens(DIMS, 2, {"a": ["ctx"], "b": ["user_id", "user_age", "item_id", "item_cat"]}, mode="split")
    assert grouped.columns[0][:3] == (12, 13, 14)  # group order, not feature order


@pytest.mark.parametrize(
    "args, message",
    [
        ((DIMS, None, {"g": ["nope"]}), r"group 'g' names unknown feature 'nope'"),
        ((DIMS, None, {"a": ["user_id"], "b": ["user_id"]}), r"feature 'user_id' is in two groups: 'a' and 'b'"),
        ((DIMS, None, {"a": []}), r"group 'a' is empty"),
        ((DIMS, None, {"a": ["user_id"]}), r"features \['user_age', 'item_id', 'item_cat', 'ctx'\] are embedded but in no group"),
        ((DIMS, 6), r"num_tokens \(6\) is larger than the number of features \(5\)"),
        ((DIMS, 16, None, "split"), r"num_tokens \(16\) is larger than the concatenated embedding width \(15\)"),
        ((DIMS, 0), r"num_tokens \(0\)"),
        ((DIMS, None), r"mode='auto' needs num_tokens"),
        ((DIMS, 2, None, "semantic"), r"tokenization mode \('semantic'\)"),
        ((DIMS, 2, {"a": list(DIMS)}, "auto"), r"mode='auto' takes no groups"),
        ((DIMS, 3, {"a": list(DIMS)}), r"num_tokens \(3\) must equal the number of groups \(1\)"),
        (({}, 1), r"no sparse features"),
        (({"a": 0}, 1), r"embedding dim of feature 'a' \(0\)"),
        ((DIMS, None, {"a": "user_id"}), r"group 'a' must be a list"),
        ((DIMS, None, None, "groups"), r"mode='groups' needs groups"),
    ],
)
def test_misconfiguration_names_the_problem(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_tokens(*args)
