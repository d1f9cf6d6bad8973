"""The package installs from the repository into a fresh virtual environment and runs.

Two installs, neither needing a network:
- `pip install forklane` with no extras, from a local wheelhouse holding the built wheel and
  exactly the SDK's dependency closure (repacked from this environment), so pip's resolver
  fails if the wheel asks for anything more; then what `import forklane` loads, what the
  console script says without its extras, and that a user's own `sdk/` package and
  `proxy.py` beside it change nothing;
- the wheel with every dependency lent from the running environment through a .pth file:
  the build, the package list, the console script, `py.typed`, and that `forklane proxy …` /
  `forklane controlplane …` run forklane's code whatever the working directory holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

from tests.support.wheelhouse import closure, repack

ROOT = Path(__file__).resolve().parents[2]
SERVER_STACKS = ("aiohttp", "grpc", "uvloop", "httptools", "h2", "asyncpg", "aiosqlite",
                 "typer", "rich", "click", "opentelemetry", "prometheus_client",
                 "pydantic_settings", "forklane.proxy", "forklane.controlplane.api",
                 "nats", "aio_pika", "aiormq", "aiokafka")  # fmt: skip


def _build_wheel(tmp_path: Path) -> Path:
    """The interpreted wheel: what these tests check is which files and dependencies a
    wheel carries, not the C build (setting up compiles that, and the hot-path tests run
    it), and compiling takes a minute."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "FORKLANE_NO_COMPILE": "1"},
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("forklane-*.whl")
    return wheel


def _user_files(where: Path, *, forklane_py: bool = True) -> Path:
    """What a user's project may hold: its own `sdk` package, `proxy.py`, `controlplane.py`
    and even a `forklane.py` (which shadows `import forklane` for the user's own scripts,
    as any module in the working directory does, but must never change what the `forklane`
    command runs), each announcing itself if it is ever run."""
    where.mkdir(exist_ok=True)
    (where / "sdk").mkdir(exist_ok=True)
    (where / "sdk" / "__init__.py").write_text("")
    (where / "sdk" / "propagation.py").write_text("OWNER = 'user'\n")
    for name in ("proxy", "controlplane", *(("forklane",) if forklane_py else ())):
        (where / f"{name}.py").write_text(f"print('USER CODE RAN: {name}.py')\n")
    return where


@pytest.mark.slow
def test_pip_install_forklane_without_extras_is_the_sdk_only(tmp_path: Path) -> None:
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(r.split(">")[0].split("<")[0].lower() for r in base) == [
        "httpx", "pydantic", "pyyaml"]  # fmt: skip
    house = tmp_path / "house"
    house.mkdir()
    for dist in closure(base).values():
        repack(dist, house)
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "sdk-only"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py, script = env_dir / "bin" / "python", env_dir / "bin" / "forklane"
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(house),
         "--find-links", str(wheel.parent), "forklane"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    project = _user_files(tmp_path / "project", forklane_py=False)
    code = (
        "import json, sys, sdk.propagation, forklane, forklane.propagation;"
        "from forklane import Client, Sandbox, Invalid;"
        "import forklane.propagation.httpx, forklane.propagation.asgi, forklane.propagation.wsgi;"
        "import forklane.messaging;"
        "print(json.dumps({'user': sdk.propagation.OWNER, 'ours': forklane.__file__,"
        "'modules': sorted(sys.modules)}))"
    )
    shown = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=project)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["user"] == "user"  # the user's own `sdk` package is theirs
    assert doc["ours"].startswith(str(env_dir))
    loaded = [m for m in doc["modules"] if m.startswith(SERVER_STACKS)]
    assert loaded == [], loaded
    _user_files(project)
    for args, extra in ((["--help"], "cli"), (["proxy", "run", "--help"], "proxy"),
                        (["controlplane", "serve", "--help"], "controlplane")):  # fmt: skip
        done = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=project)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == "" and "USER CODE RAN" not in done.stderr
        (line,) = done.stderr.splitlines()
        assert f"pip install 'forklane[{extra}]'" in line, line


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
    wheel = _build_wheel(tmp_path)
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
    # a working directory full of look-alikes changes nothing for the components
    project = _user_files(tmp_path / "project")
    for component, marker in (("proxy", "schema"), ("controlplane", "serve")):
        done = subprocess.run([str(env_dir / "bin" / "forklane"), component, "--help"],
                              capture_output=True, text=True, cwd=project)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert marker in done.stdout and "USER CODE RAN" not in done.stdout + done.stderr
