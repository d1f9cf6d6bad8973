"""Packaging glue that pyproject.toml cannot express: the import-name mapping and the compiled
hot path.

The repository keeps its three top-level folders (`proxy/`, `controlplane/`, `sdk/`), and the
wheel installs them under one import name, so nothing on a user's path called `proxy` or `sdk`
can shadow forklane or be shadowed by it:

    sdk/          -> forklane               (the SDK, its propagation helpers and the CLI)
    proxy/        -> forklane.proxy         (the sidecar)
    controlplane/ -> forklane.controlplane  (the control plane)

The proxy's request-path modules (`forklane.proxy.hotpath.MODULES`) are plain Python that
Cython also compiles, in pure-Python mode: one source, run compiled where a C compiler built
it and interpreted everywhere else. A build without a compiler (or with
`FORKLANE_NO_COMPILE=1`) still succeeds and installs the interpreted package, saying so in one
line. Development installs use setuptools' `strict` editable mode (a tree of links under
`build/`), so type checkers and the layering check see the same package tree the wheel has;
the compiled modules land in that tree next to the links.
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOTS = {"forklane": "sdk", "forklane.proxy": "proxy", "forklane.controlplane": "controlplane"}

def _hot_modules() -> tuple[str, ...]:
    """proxy/hotpath.py's MODULES, read from its source: one list, and the build never
    imports the package it is building."""
    tree = ast.parse((Path(__file__).resolve().parent / "proxy" / "hotpath.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "MODULES":
            assert node.value is not None
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("proxy/hotpath.py defines no MODULES")


HOT_MODULES = _hot_modules()


def _packages() -> list[str]:
    names: list[str] = []
    for name, folder in ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(names))


def _source(module: str) -> str:
    for prefix, folder in sorted(ROOTS.items(), key=lambda item: -len(item[0])):
        if module.startswith(prefix + "."):
            rest = module[len(prefix) + 1 :].replace(".", "/")
            return f"{folder}/{rest}.py"
    raise ValueError(module)


def _stage_pxd(root: str = "build/pxd") -> str:
    """Copy each hot module's augmenting `.pxd` (C types for the compiled build, next to its
    source) to where Cython looks for it: under the module's import name, which differs from
    the folder the source sits in (`proxy/` is `forklane.proxy`)."""
    for name in HOT_MODULES:
        pxd = _source(name)[: -len(".py")] + ".pxd"
        if not os.path.exists(pxd):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts)):  # Cython wants each level to be a package
            folder = os.path.join(root, *parts[:depth])
            os.makedirs(folder, exist_ok=True)
            open(os.path.join(folder, "__init__.pxd"), "a").close()
        with open(pxd, "rb") as src, open(os.path.join(root, *parts) + ".pxd", "wb") as dst:
            dst.write(src.read())
    return root


def _extensions() -> list[Extension]:
    if os.environ.get("FORKLANE_NO_COMPILE"):
        print("forklane: FORKLANE_NO_COMPILE is set: installing the interpreted hot path",
              file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("forklane: Cython is not available: installing the interpreted hot path",
              file=sys.stderr)
        return []
    extensions = [Extension(name, [_source(name)]) for name in HOT_MODULES]
    compiled: list[Extension] = cythonize(
        extensions,
        language_level=3,
        quiet=True,
        build_dir="build/cython",  # the generated C stays out of the source tree
        include_path=[_stage_pxd()],
        compiler_directives={
            # Annotations are for mypy; typing C variables from them would change behaviour
            # (a `float` annotation becomes a C double, `int` rejects bools...).
            "annotation_typing": False,
            "binding": True,
            "embedsignature": False,
        },
    )
    return compiled


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; without a working C compiler, install interpreted (and
    say so once)."""

    failed: list[str]

    def run(self) -> None:
        self.failed = []
        try:
            super().run()
        except Exception as exc:
            self.failed.append(str(exc))
        if self.failed:
            print(f"forklane: the hot path could not be compiled ({self.failed[0]}); "
                  "installing it interpreted", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.failed.append(f"{ext.name}: {exc}")


setup(
    package_dir=ROOTS,
    packages=_packages(),
    package_data={name: ["py.typed"] for name in ROOTS},
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
