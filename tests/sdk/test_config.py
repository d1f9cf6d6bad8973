"""Client configuration: argument > environment > config-file context > default."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from forklane.config import (
    DEFAULT_URL,
    ConfigFile,
    Context,
    config_path,
    load_config_file,
    resolve_config,
    save_config_file,
)
from forklane.errors import ConfigError

FILE = """\
current-context: staging
contexts:
  - name: staging
    url: https://staging.example.com/
    token: staging-token
  - name: local
    url: http://127.0.0.1:9999
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(FILE)
    return {"FORKLANE_CLIENT_CONFIG": str(path), "HOME": str(tmp_path)}


def test_default_without_anything(tmp_path: Path) -> None:
    cfg = resolve_config(env={"HOME": str(tmp_path)})
    assert cfg.url == DEFAULT_URL and cfg.token is None and cfg.context is None


def test_current_context_from_the_file(env: dict[str, str]) -> None:
    cfg = resolve_config(env=env)
    assert cfg.url == "https://staging.example.com"  # trailing slash dropped
    assert cfg.token == "staging-token"
    assert cfg.context == "staging"


def test_environment_beats_the_file_per_setting(env: dict[str, str]) -> None:
    cfg = resolve_config(env={**env, "FORKLANE_URL": "http://env.example:1"})
    assert cfg.url == "http://env.example:1"
    assert cfg.token == "staging-token"  # still from the context


def test_arguments_beat_the_environment(env: dict[str, str]) -> None:
    e = {**env, "FORKLANE_URL": "http://env.example:1", "FORKLANE_TOKEN": "env-token"}
    cfg = resolve_config(url="http://arg.example:2", token="arg-token", env=e)
    assert (cfg.url, cfg.token) == ("http://arg.example:2", "arg-token")


def test_forklane_context_selects_another_context(env: dict[str, str]) -> None:
    cfg = resolve_config(env={**env, "FORKLANE_CONTEXT": "local"})
    assert cfg.url == "http://127.0.0.1:9999" and cfg.token is None
    assert resolve_config(context="staging", env={**env, "FORKLANE_CONTEXT": "local"}).context == (
        "staging"
    )


def test_an_unknown_context_is_an_error_not_a_silent_fallback(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="no context named 'prod'"):
        resolve_config(context="prod", env=env)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("contexts: [", "not valid YAML"),
        ("contexts:\n  - name: a\n", "url"),
        ("contexts:\n  - name: a\n    url: ftp://x\n", "expected http"),
        ("surprise: 1\n", "surprise"),
        ("current-context: nope\n", "not defined"),
    ],
)
def test_a_broken_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        resolve_config(env={"FORKLANE_CLIENT_CONFIG": str(path)})


def test_bad_url_argument(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected http"):
        resolve_config(url="127.0.0.1:8080", env={"HOME": str(tmp_path)})


def test_default_path_follows_xdg(tmp_path: Path) -> None:
    assert config_path({"HOME": "/home/u"}) == Path("/home/u/.config/forklane/config.yaml")
    assert config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/forklane/config.yaml")


def test_save_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.yaml"
    cfg = ConfigFile(path=path).with_context(Context("a", "http://a:1", "secret"))
    cfg = cfg.with_context(Context("b", "http://b:2")).with_current("b")
    save_config_file(cfg)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_config_file(path)
    assert loaded.current_context == "b"
    assert loaded.find("a") == Context("a", "http://a:1", "secret")
    assert loaded.find("b") == Context("b", "http://b:2", None)


def test_with_current_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ConfigFile(path=tmp_path / "c.yaml").with_current("ghost")
