"""The hot path's two modes: one list of compiled modules, the switch, and what runs."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from forklane.proxy import hotpath

ROOT = Path(__file__).resolve().parents[2]


def test_setup_compiles_exactly_the_hot_path_modules() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_hot_modules"]
    space: dict[str, Any] = {"ast": ast, "Path": Path, "__file__": str(ROOT / "setup.py")}
    exec(compile(ast.Module([func], []), "setup.py", "exec"), space)
    assert space["_hot_modules"]() == hotpath.MODULES


def test_every_hot_path_module_has_its_source() -> None:
    roots = {"forklane.proxy.": "proxy/"}
    for name in hotpath.MODULES:
        prefix = next(p for p in roots if name.startswith(p))
        assert (ROOT / (roots[prefix] + name[len(prefix):].replace(".", "/") + ".py")).exists()


def test_the_mode_asked_for_is_the_mode_that_runs() -> None:
    """Under FORKLANE_HOT_PATH=interpreted every hot-path module was loaded from its source;
    otherwise, where the compiled modules are installed, every one runs compiled."""
    for name in hotpath.MODULES:
        __import__(name)
    loaders = {name: type(sys.modules[name].__loader__) for name in hotpath.MODULES}
    if os.environ.get("FORKLANE_HOT_PATH") == "interpreted":
        assert hotpath.mode() == "interpreted"
        assert all(loader is not importlib.machinery.ExtensionFileLoader
                   for loader in loaders.values()), loaders
    elif hotpath.compiled_available():
        assert hotpath.mode() == "compiled"
        assert all(loader is importlib.machinery.ExtensionFileLoader
                   for loader in loaders.values()), loaders
    else:
        pytest.skip("the compiled hot path is not installed here (no C compiler at set-up)")


def test_compiled_cannot_be_forced_where_it_is_missing_or_switched_off() -> None:
    if hotpath.mode() == "compiled":
        assert hotpath.select("compiled") == "compiled"
        assert hotpath.select("auto") == "compiled"
        with pytest.raises(hotpath.HotPathError, match="already imported"):
            hotpath.select("interpreted")  # too late: the compiled modules are loaded
    else:
        with pytest.raises(hotpath.HotPathError, match="not installed"):
            hotpath.select("compiled")
        assert hotpath.select("auto") == "interpreted"
