"""utils/files.py: atomic writes keep the old file on failure and leave no temporary."""

import os

import pytest

from torchrec_rankmixer.utils.files import atomic_write_bytes, atomic_write_text, atomic_write_with, sha256_file


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path) -> None:
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["a.json"]


def test_atomic_write_with_keeps_the_suffix_and_the_old_file_on_error(tmp_path) -> None:
    path = tmp_path / "model.pt2"
    seen = []
    atomic_write_with(path, lambda tmp: (seen.append(tmp), open(tmp, "w").write("v1")))
    assert seen[0].endswith(".pt2") and os.path.dirname(seen[0]) == str(tmp_path)
    assert path.read_text() == "v1"

    def fail(tmp: str) -> None:
        open(tmp, "w").write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(path, fail)
    assert path.read_text() == "v1" and os.listdir(tmp_path) == ["model.pt2"]
    assert len(sha256_file(str(path))) == 64
