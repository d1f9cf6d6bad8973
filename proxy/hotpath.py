"""Which hot path runs: the compiled one (Cython, built from the same sources) or the
interpreted one, and the switch that picks the interpreted one at run time.

The request-path modules in `MODULES` are ordinary Python; the build compiles them with
Cython where a C compiler exists (`setup.py`), and the compiled module sits next to its
source, where Python's import prefers it. `select("interpreted")` installs a finder that loads
the sources instead, so both modes run from one installation (tests compare them). It must run
before any of those modules is imported: the proxy's entry point calls it right after parsing
its settings (`hot_path`, `FORKLANE_HOT_PATH`).

No behaviour may differ between the modes: the compiled modules are the same code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

__all__ = ["MODULES", "HotPathError", "Mode", "compiled_available", "is_compiled", "mode",
           "select"]

Mode = Literal["auto", "compiled", "interpreted"]

MODULES: tuple[str, ...] = (
    "forklane.proxy.forward.core",
    "forklane.proxy.forward.accounting",
    "forklane.proxy.http1.server",
    "forklane.proxy.http1.upstream",
    "forklane.proxy.http1.messages",
    "forklane.proxy.http1.head",
    "forklane.proxy.routing",
    "forklane.proxy.context.carriers",
    "forklane.proxy.balancer",
    "forklane.proxy.metrics",
    "forklane.proxy.listener.context",
    "forklane.proxy.http2.frames",
    "forklane.proxy.http2.hpack",
    "forklane.proxy.http2.huffman",
    "forklane.proxy.http2.conn",
    "forklane.proxy.http2.checks",
    "forklane.proxy.http2._flow",
    "forklane.proxy.http2._guard",
    "forklane.proxy.http2.server",
    "forklane.proxy.http2.upstream",
)
_WANTED = frozenset(MODULES)


class HotPathError(RuntimeError):
    """The requested mode cannot be had (no compiled modules, or chosen too late)."""


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the `.py` source of a hot-path module, ahead of its compiled twin."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _WANTED:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path or sys.path:
            candidate = os.path.join(entry, leaf)
            if os.path.exists(candidate):
                return importlib.util.spec_from_file_location(fullname, candidate)
        return None


def _is_extension(name: str) -> bool:
    module = sys.modules.get(name)
    if module is not None:
        return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)
    spec = importlib.util.find_spec(name)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def compiled_available() -> bool:
    """True when every hot-path module has a compiled build installed."""
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return False
    return all(_is_extension(name) for name in MODULES)


def select(wanted: Mode) -> str:
    """Make `wanted` the mode of this process and return the mode that runs.

    `auto`: compiled when built, else interpreted. `compiled`: raise HotPathError when the
    compiled modules are missing. `interpreted`: load the sources even where compiled ones
    exist."""
    if wanted == "interpreted":
        loaded = [name for name in MODULES if name in sys.modules and _is_extension(name)]
        if loaded:
            raise HotPathError(f"compiled modules already imported: {', '.join(loaded)}")
        if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceFinder())
        return "interpreted"
    available = compiled_available()
    if wanted == "compiled" and not available:
        raise HotPathError("the compiled hot path is not installed (no C compiler at build "
                           "time?); run with hot_path=auto or interpreted")
    return "compiled" if available else "interpreted"


def is_compiled(name: str) -> bool:
    """Whether module `name` (imported or importable) runs compiled in this process."""
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return False
    return _is_extension(name)


def mode() -> str:
    """What runs now: `compiled` when every hot-path module is compiled, else `interpreted`."""
    return "compiled" if compiled_available() else "interpreted"
