"""The README's settings tables against the settings the code has, in both directions.

For the proxy (`forklane proxy run`) and the control plane (`forklane controlplane serve`):
every setting a table names exists, has its flag in the command's real `--help` (or the
table says it is environment only, and then it has none), and is read from
`FORKLANE_<NAME>`; every setting that exists is in a table. Every `FORKLANE_…` variable the
README names anywhere is a setting or one of the client's own variables.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from forklane.config import CONFIG_ENV
from forklane.controlplane.settings import Settings
from forklane.proxy.settings import ProxySettings, flag_of

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CLIENT_VARIABLES = {"FORKLANE_URL", "FORKLANE_TOKEN", "FORKLANE_CONTEXT", CONFIG_ENV}
NOT_VARIABLES = {
    "FORKLANE_ROUTES": "the JetStream stream of the routes view",
    "FORKLANE_SANDBOX": "set in a fork workload's containers (and read by the example "
                        "consumer app), not a setting of forklane",
    "FORKLANE_ROUTING_KEY": "set in a fork workload's containers for the app's own use",
    "FORKLANE_FUZZ_EXAMPLES": "read by the fuzzing harnesses (tests/fuzz), not by forklane",
}


def section(title: str) -> str:
    """From `### title` to the next heading."""
    start = README.index(f"\n### {title}\n") + 1
    found = re.compile(r"^#{2,3} ", re.M).search(README, start + 4)
    return README[start : found.start() if found else len(README)]


def table_rows(text: str) -> dict[str, str]:
    """`name` → its whole row, for every setting named in the first cell of a table row."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([a-z0-9_]+)`", first):
            assert name not in rows, f"{name} is documented twice"
            rows[name] = line
    return rows


def help_text(*command: str) -> str:
    done = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                          text=True, timeout=60, check=False, env={"COLUMNS": "300",
                          "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


COMPONENTS = {
    "proxy": (ProxySettings, "Proxy settings", ("forklane.proxy", "run")),
    "controlplane": (Settings, "Control plane settings", ("forklane.controlplane", "serve")),
}


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_setting_is_documented_and_every_documented_one_exists(component: str) -> None:
    model, title, _ = COMPONENTS[component]
    documented = set(table_rows(section(title)))
    existing = set(model.model_fields)
    assert sorted(existing - documented) == [], "settings missing from the README's table"
    assert sorted(documented - existing) == [], "the README documents settings that do not exist"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_documented_setting_is_a_flag_or_said_to_be_environment_only(
    component: str,
) -> None:
    _, title, command = COMPONENTS[component]
    shown = help_text(*command)
    flags = set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", shown))
    for name, row in table_rows(section(title)).items():
        if "environment only" in row:
            assert flag_of(name) not in flags, f"{name} is said to be environment only"
            continue
        named = set(re.findall(r"`(--[a-z0-9-]+)", row))
        assert flag_of(name) in flags or named & flags, f"{name}: no flag in {command} --help"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_setting_is_read_from_its_environment_variable(
    component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each setting's own variable reaches it (a sample value of the field's type)."""
    model, _, _ = COMPONENTS[component]
    assert model.model_config.get("env_prefix") == "FORKLANE_"
    for name, field in model.model_fields.items():
        assert field.alias is None and field.validation_alias is None, name
    samples = {"proxy": {"max_pipelined": ("32", 32), "node_id": ("n-1", "n-1"),
                         "controlplane_keepalive": ("25", 25.0), "seed": ("7", 7)},
               "controlplane": {"reconcile_interval": ("2.5", 2.5), "replica": ("r-9", "r-9"),
                                "default_sandbox_ttl": ("2h", "2h")}}[component]  # fmt: skip
    for name, (text, _) in samples.items():
        monkeypatch.setenv(f"FORKLANE_{name.upper()}", text)
    settings: BaseSettings = model()
    assert {n: getattr(settings, n) for n in samples} == {n: v for n, (_, v) in samples.items()}


def test_every_variable_the_readme_names_exists() -> None:
    named = set(re.findall(r"\bFORKLANE_[A-Z0-9_]*[A-Z0-9]\b", README)) - set(NOT_VARIABLES)
    known = CLIENT_VARIABLES | {
        f"FORKLANE_{name.upper()}"
        for model in (ProxySettings, Settings) for name in model.model_fields
    }  # fmt: skip
    assert sorted(named - known) == []
    assert CLIENT_VARIABLES <= named, "the client's own variables are documented"
