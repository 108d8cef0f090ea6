"""The direction of imports between the package's parts (docs/architecture.md, "Layers").

Every import of ``torchrec_rankmixer.<part>`` anywhere in a file (module level, inside a
function, or in a doctest) must go down the layers below: inference never reaches into
train, the dense core never imports TorchRec-side parts, and so on.
"""

import ast
import os
from typing import Dict, List, Set, Tuple

import torchrec_rankmixer

PACKAGE = os.path.dirname(torchrec_rankmixer.__file__)

# part -> the parts it may import (besides itself)
ALLOWED: Dict[str, Set[str]] = {
    "version": set(),
    "utils": set(),
    "ops": {"utils"},
    "config": {"ops", "utils"},
    "modules": {"config", "ops", "utils"},
    "features": {"config", "modules", "ops", "utils"},
    "data": {"features", "config", "utils"},
    "models": {"config", "features", "modules", "ops", "utils"},
    "run_format": {"data", "models", "utils"},
    "inference": {"config", "data", "features", "models", "modules", "ops", "run_format", "utils", "version"},
    "train": {"config", "data", "features", "models", "modules", "ops", "run_format", "utils", "version"},
    "demo": {"config", "data", "models", "train", "utils"},
    "__init__": {"config", "modules", "version"},
}


def _files() -> List[Tuple[str, str]]:
    out = []
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                out.append((os.path.relpath(path, PACKAGE).split(os.sep)[0].removesuffix(".py"), path))
    return out


def _imported_parts(path: str) -> Set[str]:
    parts = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        parts |= {n.split(".")[1] for n in names if n.startswith("torchrec_rankmixer.")}
    return parts


def test_every_part_has_a_layer() -> None:
    assert {part for part, _ in _files()} <= set(ALLOWED)


def test_imports_go_down_the_layers() -> None:
    bad = [f"{os.path.relpath(path, PACKAGE)} imports torchrec_rankmixer.{other}"
           for part, path in _files() for other in _imported_parts(path) - ALLOWED[part] - {part}]
    assert not bad, bad


def test_inference_never_names_train() -> None:
    """Not even in a doctest or a docstring: serving code runs without the trainer."""
    bad = [os.path.relpath(path, PACKAGE) for part, path in _files()
           if part == "inference" and "torchrec_rankmixer.train" in open(path).read()]
    assert not bad, bad


def test_the_checker_sees_a_violation(tmp_path) -> None:
    """The AST scan finds function-local imports (what the layer tests rely on)."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from torchrec_rankmixer.train.loop import Trainer\n")
    assert _imported_parts(str(f)) == {"train"}
