"""Client configuration: where the control plane is and which token to present.

This is the only SDK module that reads the environment or the config file. Each setting is
resolved on its own, first match wins:

1. an explicit argument (`Client(url=..., token=..., context=...)`, CLI `--url` ...);
2. the environment: `FORKLANE_URL`, `FORKLANE_TOKEN`, `FORKLANE_CONTEXT`;
3. the config file's context (the one named by argument / `FORKLANE_CONTEXT`, else its
   `current-context`);
4. the default URL `http://127.0.0.1:8080`, no token.

The config file (`~/.config/forklane/config.yaml`, or `$XDG_CONFIG_HOME/forklane/...`, or
`FORKLANE_CLIENT_CONFIG`) holds named contexts like kubectl's::

    current-context: staging
    contexts:
      - name: staging
        url: https://forklane.staging.example.com
        token: s3cr3t

Invariants: a resolved URL is `http(s)://host[:port][/prefix]` without a trailing slash; a
context named explicitly must exist (a typo never silently falls back to another cluster);
the file is written atomically with mode 0600 because it holds tokens.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forklane.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_URL",
    "ClientConfig",
    "ConfigFile",
    "Context",
    "config_path",
    "load_config_file",
    "normalize_url",
    "resolve_config",
    "save_config_file",
]

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_ENV = "FORKLANE_CLIENT_CONFIG"


@dataclass(frozen=True, slots=True)
class Context:
    name: str
    url: str
    token: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The parsed config file; `with_context`/`with_current` return changed copies."""

    path: Path
    current_context: str | None = None
    contexts: tuple[Context, ...] = ()

    def find(self, name: str) -> Context | None:
        return next((c for c in self.contexts if c.name == name), None)

    def with_context(self, context: Context) -> ConfigFile:
        others = tuple(c for c in self.contexts if c.name != context.name)
        return replace(self, contexts=(*others, context))

    def with_current(self, name: str) -> ConfigFile:
        if self.find(name) is None:
            raise ConfigError(f"no context named {name!r} in {self.path}")
        return replace(self, current_context=name)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What a client connects with; `context` names the config-file context used, if any."""

    url: str = DEFAULT_URL
    token: str | None = None
    context: str | None = None


class _ContextDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    url: str
    token: str | None = None


class _FileDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    current_context: str | None = Field(None, alias="current-context")
    contexts: list[_ContextDoc] = Field(default_factory=list)


def normalize_url(url: str) -> str:
    """Check that `url` is an http(s) URL with a host and drop any trailing slash."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"control-plane URL {url!r}: expected http(s)://HOST[:PORT]")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(f"control-plane URL {url!r}: invalid port") from None
    return text.rstrip("/")


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the config file lives: `FORKLANE_CLIENT_CONFIG`, else the XDG config directory.

    Not `FORKLANE_CONFIG`: that is the proxy's static routing file, and a `forklane proxy run`
    started from a shell that set it for the CLI would load the contexts as routes."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "forklane" / "config.yaml"


def load_config_file(path: Path) -> ConfigFile:
    """Parse the config file; a missing file is an empty configuration."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConfigFile(path=path)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    try:
        doc = _FileDoc.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ConfigError(f"config file {path}: {where}: {first['msg']}") from None
    contexts = tuple(Context(c.name, normalize_url(c.url), c.token) for c in doc.contexts)
    return ConfigFile(path=path, current_context=doc.current_context, contexts=contexts)


def save_config_file(config: ConfigFile) -> None:
    """Write atomically (temp file + rename), readable only by the owner."""
    doc: dict[str, object] = {
        "current-context": config.current_context,
        "contexts": [
            {"name": c.name, "url": c.url, **({"token": c.token} if c.token else {})}
            for c in config.contexts
        ],
    }
    config.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=config.path.parent, prefix=".config-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, config.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_config(
    url: str | None = None,
    token: str | None = None,
    context: str | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Resolve each setting: argument > environment > config-file context > default."""
    env = os.environ if env is None else env
    url = url or env.get("FORKLANE_URL") or None
    token = token or env.get("FORKLANE_TOKEN") or None
    wanted = context or env.get("FORKLANE_CONTEXT") or None
    chosen: Context | None = None
    if wanted is not None or url is None or token is None:
        file = load_config_file(config_path(env))
        if wanted is not None:
            chosen = file.find(wanted)
            if chosen is None:
                raise ConfigError(f"no context named {wanted!r} in {file.path}")
        elif file.current_context is not None:
            chosen = file.find(file.current_context)
            if chosen is None:
                raise ConfigError(
                    f"current-context {file.current_context!r} is not defined in {file.path}"
                )
    if chosen is not None:
        url = url or chosen.url
        token = token or chosen.token
    return ClientConfig(
        url=normalize_url(url or DEFAULT_URL),
        token=token,
        context=chosen.name if chosen else None,
    )
