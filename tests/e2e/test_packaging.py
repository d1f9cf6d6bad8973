"""The package installs from the repository into a fresh virtual environment and runs.

Dependencies are lent from the running environment through a .pth file (the suite must not
depend on a network), so this checks what packaging can break: the build, the package list,
the console script, `py.typed`, and that `python -m forklane.proxy` works outside the source tree.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fresh_virtualenv_installs_forklane_and_its_cli_runs(tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # Lend the dependencies (not forklane itself) from the environment running the tests.
    (Path(purelib) / "lend.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("forklane-*.whl")
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr
    installed = subprocess.run(
        [str(py), "-c", "import forklane, forklane.proxy, forklane.controlplane, pathlib; "
         "print(pathlib.Path(forklane.__file__).parent)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()
    assert installed.startswith(str(env_dir)), installed  # not the source tree
    assert (Path(installed) / "py.typed").exists()
    cli = subprocess.run([str(env_dir / "bin" / "forklane"), "--help"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "sandbox" in cli.stdout and "Exit codes" in cli.stdout
    schema = subprocess.run([str(py), "-m", "forklane.proxy", "schema"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert schema.returncode == 0 and '"RoutingSnapshot"' in schema.stdout
    assert sys.version_info >= (3, 11)
