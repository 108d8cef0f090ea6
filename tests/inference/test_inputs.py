"""Input checks: every bad input gives its own clear ValueError."""

import math

import pytest
import torch
from torchrec import KeyedJaggedTensor

from torchrec_rankmixer.inference.inputs import InputSchema, columns_to_inputs

SCHEMA = InputSchema(("a", "b"), (10, 20), ("x", "y"))
DENSE = [[0.5, 1.0], [2.0, -1.0]]


def test_formats_give_the_same_tensors():
    by_lists = SCHEMA.to_tensors({"a": [[1], [2]], "b": [[3, 4], [5, 6]]}, DENSE)
    by_tensors = SCHEMA.to_tensors({"b": torch.tensor([[3, 4], [5, 6]]), "a": torch.tensor([1, 2])},
                                   torch.tensor(DENSE))
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["b", "a"], values=torch.tensor([3, 4, 5, 6, 1, 2]), lengths=torch.tensor([2, 2, 1, 1]))
    by_kjt = SCHEMA.kjt_to_tensors(kjt, DENSE)
    for x, y, z in zip(by_lists, by_tensors, by_kjt):
        assert torch.equal(x, y) and torch.equal(x, z)
    dense, values, lengths = by_lists
    assert dense.dtype == torch.float32 and values.dtype == torch.int64 and lengths.dtype == torch.int32
    assert values.tolist() == [1, 2, 3, 4, 5, 6] and lengths.tolist() == [[1, 1], [2, 2]]


def test_integer_dense_is_accepted():
    dense, _, _ = SCHEMA.to_tensors({"a": [1, 2], "b": [3, 4]}, [[1, 2], [3, 4]])
    assert dense.dtype == torch.float32


@pytest.mark.parametrize(
    "sparse,dense,message",
    [
        ({"a": [1, 2], "b": [3, 4], "c": [1, 1]}, DENSE, r"unknown sparse features \['c'\]"),
        ({"a": [1, 2]}, DENSE, r"missing sparse features \['b'\]"),
        ({"a": [1, 2], "b": [3, 20]}, DENSE, r"feature 'b' has id 20 outside its table's range \[0, 20\)"),
        ({"a": [-1, 2], "b": [3, 4]}, DENSE, r"feature 'a' has id -1 outside"),
        ({"a": [1.0, 2.0], "b": [3, 4]}, DENSE, r"'a': ids must be integers, got dtype torch.float32"),
        ({"a": [[1], [2.5]], "b": [3, 4]}, DENSE, r"'a' row 1: ids must be integers, got 2.5"),
        ({"a": [[1], [True]], "b": [3, 4]}, DENSE, r"'a' row 1: ids must be integers, got True"),
        ({"a": ["1", "2"], "b": [3, 4]}, DENSE, r"'a': ids must be integers"),
        ({"a": torch.zeros(2, 1, 1, dtype=torch.long), "b": [3, 4]}, DENSE, r"must be \[B\] or \[B, n\]"),
        ({"a": [1, 2, 3], "b": [3, 4]}, DENSE, r"'b' has 2 samples, 'a' has 3"),
        ({"a": [], "b": []}, None, "empty batch"),
        ({"a": [1, 2], "b": [3, 4]}, None, r"dense features are missing: the model takes 2 \(\['x', 'y'\]\)"),
        ({"a": [1, 2], "b": [3, 4]}, [[0.5], [1.0]], r"dense features shape \(2, 1\) must be \[B, 2\]"),
        ({"a": [1, 2], "b": [3, 4]}, [[0.5, 1.0]], "batch size mismatch: dense features have 1 rows"),
        ({"a": [1, 2], "b": [3, 4]}, [[0.5, math.nan], [1.0, 2.0]], r"dense column 'y' has a non-finite value \(NaN/inf\) at row 0"),
        ({"a": [1, 2], "b": [3, 4]}, [[0.5, 1.0], [math.inf, 2.0]], "dense column 'x' has a non-finite value .* at row 1"),
        ({"a": [1, 2], "b": [3, 4]}, [[True, False], [True, True]], "dense features must be real numbers, got dtype torch.bool"),
        ({"a": [1, 2], "b": [3, 4]}, [["p", "q"], ["r", "s"]], "dense features must be numbers"),
        ([1, 2], DENSE, "sparse features must be a mapping"),
    ],
)
def test_bad_inputs(sparse, dense, message):
    with pytest.raises(ValueError, match=message):
        SCHEMA.to_tensors(sparse, dense)


def test_kjt_errors():
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "z"], values=torch.tensor([1, 2]),
                                              lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"unknown sparse features \['z'\]"):
        SCHEMA.kjt_to_tensors(kjt, [[0.0, 0.0]])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["a", "b"], values=torch.tensor([1.0, 2.0]),
                                              lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="ids must be integers, got torch.float32"):
        SCHEMA.kjt_to_tensors(kjt, [[0.0, 0.0]])


def test_no_dense_model():
    schema = InputSchema(("a",), (5,), ())
    dense, _, _ = schema.to_tensors({"a": [1, 2, 3]})
    assert dense.shape == (3, 0)
    with pytest.raises(ValueError, match="takes no dense features"):
        schema.to_tensors({"a": [1]}, [[1.0]])


def test_columns():
    cols = {"a": [1, "2|3", [4], ""], "b": [1, 2, 3, 4], "x": [1, 2.5, 3, 4], "y": [0, 0, 0, 0]}
    sparse, dense = columns_to_inputs(SCHEMA, cols)
    assert sparse["a"] == [[1], [2, 3], [4], []] and dense[1] == [2.5, 0.0]
    for bad, message in [
        ({"a": [None]}, r"sparse column 'a' row 0 is empty \(null\)"),
        ({"a": ["1|x"]}, r"sparse column 'a' row 0: '1\|x' is not integer ids"),
        ({"x": [None]}, r"dense column 'x' row 0 is empty"),
        ({"x": ["1.5x"]}, r"dense column 'x' row 0: '1.5x' is not a number"),
        ({"b": [2.5]}, r"sparse column 'b' row 0: 2.5 is not integer ids"),
    ]:
        base = {"a": [1], "b": [1], "x": [1.0], "y": [1.0]}
        with pytest.raises(ValueError, match=message):
            columns_to_inputs(SCHEMA, {**base, **bad})
    # a CSV column with one bad cell is read as text: numbers still parse, and the error
    # names the bad cell's own row (offset by the chunk's first row) and value
    text = {"a": [1, 2, 3], "b": [1, 2, 3], "x": ["0.5", "1", "oops"], "y": ["0", "0", "0"]}
    with pytest.raises(ValueError, match=r"dense column 'x' row 102: 'oops' is not a number"):
        columns_to_inputs(SCHEMA, text, first_row=100)
    _, dense = columns_to_inputs(SCHEMA, {**text, "x": ["0.5", "1", "2"]})
    assert dense == [[0.5, 0.0], [1.0, 0.0], [2.0, 0.0]]
