"""Packaging glue that pyproject.toml cannot express: the import-name mapping.

The repository keeps its three top-level folders (`proxy/`, `controlplane/`, `sdk/`), and the
wheel installs them under one import name, so nothing on a user's path called `proxy` or `sdk`
can shadow forklane or be shadowed by it:

    sdk/          -> forklane               (the SDK, its propagation helpers and the CLI)
    proxy/        -> forklane.proxy         (the sidecar)
    controlplane/ -> forklane.controlplane  (the control plane)

Development installs use setuptools' `strict` editable mode (a tree of links under `build/`),
so type checkers and the layering check see the same package tree the wheel has.
"""

from __future__ import annotations

from setuptools import find_packages, setup

ROOTS = {"forklane": "sdk", "forklane.proxy": "proxy", "forklane.controlplane": "controlplane"}


def _packages() -> list[str]:
    names: list[str] = []
    for name, folder in ROOTS.items():
        names.append(name)
        names += [f"{name}.{sub}" for sub in find_packages(folder)]
    return sorted(set(names))


setup(
    package_dir=ROOTS,
    packages=_packages(),
    package_data={name: ["py.typed"] for name in ROOTS},
)
