"""Control-plane settings: parsed once (environment, then command-line overrides), frozen.

Every option reads `FORKLANE_<NAME>` from the environment, and every option but the secrets
`admin_token` and `routing_key_secrets` is also a flag of `forklane controlplane serve`
(`--reconcile-interval`), which wins over the environment. Nothing else in the control plane reads the environment.

`auth = False` (`FORKLANE_AUTH=false` or `--no-auth`) turns bearer-token checks off and makes
every caller an admin named `anonymous`. It exists for the local demo on a laptop only: never
run a shared control plane without auth.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from forklane.proxy.schema import Carrier

__all__ = ["Settings", "parse_carriers", "parse_hostport", "ttl_seconds"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]{1,64}")  # a lowercase field name (RFC 9110)


def parse_carriers(text: str) -> tuple[Carrier, ...]:
    """`header:x-forklane-routing-key,baggage:sd-routing-key:noemit` → carriers, validated."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, rest = item.partition(":")
        name, _, flag = rest.partition(":")
        if flag not in ("", "noemit"):
            raise ValueError(f"carrier {item!r}: the only option is ':noemit'")
        try:
            out.append(Carrier.model_validate({"kind": kind, "name": name, "emit": not flag}))
        except ValidationError as exc:
            reason = "; ".join(str(e["msg"]) for e in exc.errors())
            raise ValueError(f"carrier {item!r}: {reason}") from None
    if not out:
        raise ValueError("at least one carrier is needed")
    return tuple(out)


_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def ttl_seconds(text: str) -> int:
    """`90s`, `30m`, `2h`, `1d`, `1h30m` or plain seconds → seconds (1 s .. 30 days)."""
    value = text.strip().lower()
    if value.isdigit():
        seconds = int(value)
    else:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r}: expected a duration like 90s, 30m, 2h, 1d or 1h30m")
        seconds = sum(int(n) * _UNIT[u] for n, u in parts)
    if not 0 < seconds <= 30 * 86400:
        raise ValueError(f"{text!r}: a TTL is between 1 second and 30 days")
    return seconds


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); port 0 means "any free port"."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [ipv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected host:port")
    if not host:
        raise ValueError(f"{text!r}: missing host")
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be 0..65535")
    return host, int(port_text)


class Settings(BaseSettings):
    """Everything the control plane is told at start."""

    model_config = SettingsConfigDict(env_prefix="FORKLANE_", frozen=True, extra="ignore")

    listen: str = Field("127.0.0.1:8080", description="REST API address, host:port")
    grpc: str = Field("127.0.0.1:18000", description="snapshot push (gRPC) address, host:port")
    data_dir: Path = Field(Path("./.forklane"), description="where the SQLite store lives")
    store: str = Field(
        "sqlite", description="'sqlite' (a file in data_dir), 'sqlite:PATH' or 'postgresql://…'"
    )
    admin_token: str | None = Field(
        None, description="bootstrap admin token; generated and printed once when unset "
        "(environment only: a flag would show it in ps)",
    )
    auth: bool = Field(True, description="false disables bearer tokens: local demo only")
    reconcile_interval: float = Field(5.0, gt=0, le=3600, description="seconds between passes")
    probe_timeout: float = Field(1.0, gt=0, le=60, description="fork TCP connect timeout, s")
    replica: str = Field(default_factory=socket.gethostname, description="this replica's name")
    default_sandbox_ttl: str = Field(
        "1h", description="TTL of a sandbox created without one (SDK, CLI, REST alike)"
    )
    grpc_min_ping_interval: float = Field(
        10.0, gt=0, le=3600,
        description="seconds a proxy must leave between keepalive pings (faster ones get "
        "GOAWAY too_many_pings); keep it below every proxy's controlplane_keepalive",
    )
    grpc_keepalive: float = Field(
        30.0, gt=0, le=3600, description="seconds between the control plane's own pings"
    )
    watch_history: int = Field(
        10_000, ge=100, le=10_000_000,
        description="store revisions a watch can resume from (older ones answer 410 Gone)",
    )
    watch_bookmark_interval: float = Field(
        15.0, gt=0, le=3600, description="seconds between BOOKMARK events of a quiet watch"
    )
    token_recheck_interval: float = Field(
        30.0, gt=0, le=3600,
        description="how often a connected proxy's token is checked again (a revoked token's "
        "stream ends within this)",
    )
    notify_urls: str = Field(
        "", description="comma-separated URLs that get sandbox events (created, ready, failed, "
        "expired, deleted) as signed POSTs; set it on one replica only"
    )
    notify_secret: str = Field(
        "", description="HMAC-SHA256 key of the X-Forklane-Signature header (needed with "
        "notify_urls)"
    )
    notify_max_attempts: int = Field(10, ge=1, le=100, description="tries per delivery")
    tap_redact_headers: str = Field(
        "", description="comma-separated header names a tap capture shows as [redacted], "
        "beyond authorization, proxy-authorization, cookie and set-cookie (always hidden)"
    )
    carriers: str = Field(
        "header:x-forklane-routing-key,baggage:forklane-routing-key",
        description="where proxies read the key, in priority order: KIND:NAME[:noemit],… "
        "(kind header|baggage|tracestate); e.g. add baggage:sd-routing-key while migrating",
    )

    tunnel_host: str = Field(
        "127.0.0.1", max_length=253,
        description="address the tunnel endpoints of forklane connect listen on (one port "
        "per connected fork, chosen by the kernel); the pod IP in a cluster",
    )
    tunnel_advertise: str | None = Field(
        None, max_length=253,
        description="host proxies dial to reach those endpoints; unset: tunnel_host, which "
        "must then not be a wildcard such as 0.0.0.0",
    )
    tunnel_grace: float = Field(
        15.0, ge=0, le=3600,
        description="seconds a dropped forklane connect keeps its route (requests meanwhile "
        "get 503 fork-unavailable); a reconnect within it keeps the same endpoint",
    )

    api_rate_limit: float = Field(
        50.0, ge=0, le=100_000,
        description="REST requests per second each non-admin token may make (0: no limit); "
        "over it: 429 with Retry-After, audited",
    )
    api_rate_burst: int = Field(200, ge=1, le=1_000_000, description="requests in a burst")
    routing_key_secrets: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="signed routing keys: HMAC secrets, comma-separated, newest first (it "
        "signs; every listed one is accepted, so rotate by prepending, then drop the old); "
        "empty: keys are not signed. Each at least 16 characters",
    )

    # --- Kubernetes (all off unless `kubernetes` is true) ---
    kubernetes: bool = Field(
        False, description="discover Services, check ServiceAccount tokens, serve the webhook"
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file; unset: the pod's in-cluster ServiceAccount"
    )
    namespace: str = Field("forklane", description="the control plane's own namespace")
    forks: bool = Field(
        True, description="with kubernetes: create, route and remove forkOf fork workloads"
    )
    fork_lease: str = Field(
        "forklane-forks", description="Lease (own namespace) electing the replica that acts"
    )
    fork_lease_seconds: int = Field(
        15, ge=2, le=300, description="how long the Lease holds without a renewal"
    )
    fork_resync_interval: float = Field(
        5.0, gt=0, le=600, description="fork workloads are looked at at least this often (s)"
    )
    cluster_domain: str = Field("cluster.local", description="the cluster's DNS domain")
    discovery_namespaces: str = Field(
        "",
        description="namespaces discovered besides those labelled forklane.io/inject=enabled "
        "or forklane.io/discovery=enabled (comma-separated)",
    )
    token_audience: str = Field(
        "forklane", description="audience a proxy's ServiceAccount token must carry"
    )

    webhook_listen: str | None = Field(
        None, description="HTTPS address of the injection webhook, host:port (unset: off)"
    )
    webhook_service: str = Field("forklane", description="the Service in front of the webhook")
    webhook_config: str = Field(
        "forklane", description="MutatingWebhookConfiguration whose caBundle we keep current"
    )
    webhook_secret: str = Field(
        "forklane-webhook-tls", description="Secret (own namespace) holding generated certs"
    )
    webhook_cert_dir: Path | None = Field(
        None, description="tls.crt/tls.key from here (cert-manager) instead of generating"
    )
    webhook_check_interval: float = Field(
        3600.0, gt=0, le=86_400, description="seconds between certificate checks"
    )
    # --- the injected sidecar's defaults ---
    sidecar_image: str = Field("forklane:0.1.0", description="image of the injected sidecar")
    sidecar_image_pull_policy: str = "IfNotPresent"
    sidecar_controlplane: str = Field(
        "", description="address the sidecar dials (default WEBHOOK_SERVICE.NAMESPACE.svc:18000)"
    )
    sidecar_capture: str = Field("iptables", pattern="^(iptables|explicit)$")
    sidecar_cpu_request: str = "50m"
    sidecar_memory_request: str = "64Mi"
    sidecar_cpu_limit: str = ""
    sidecar_memory_limit: str = "128Mi"
    sidecar_drain_seconds: int = Field(5, ge=0, le=600)

    @field_validator("webhook_listen")
    @classmethod
    def _webhook_hostport(cls, v: str | None) -> str | None:
        if v is not None:
            parse_hostport(v)
        return v

    def sidecar_controlplane_address(self) -> str:
        return self.sidecar_controlplane or f"{self.webhook_service}.{self.namespace}.svc:18000"

    def discovery_namespace_list(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.discovery_namespaces.split(",") if n.strip())

    @field_validator("routing_key_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, v: object) -> object:
        if isinstance(v, str):
            return tuple(part.strip() for part in v.split(",") if part.strip())
        return v

    @field_validator("routing_key_secrets")
    @classmethod
    def _secrets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(len(secret) < 16 for secret in v):
            raise ValueError("each routing-key secret has at least 16 characters")
        if len(v) > 8:
            raise ValueError("at most 8 routing-key secrets at once")
        return v

    @field_validator("carriers")
    @classmethod
    def _carriers(cls, v: str) -> str:
        parse_carriers(v)
        return v

    def carrier_list(self) -> tuple[Carrier, ...]:
        return parse_carriers(self.carriers)

    def tap_redact_list(self) -> tuple[str, ...]:
        return tuple(n.strip().lower() for n in self.tap_redact_headers.split(",") if n.strip())

    def notify_url_list(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.notify_urls.split(",") if u.strip())

    @model_validator(mode="after")
    def _redacted_names(self) -> Settings:
        names = self.tap_redact_list()
        for name in names:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"tap_redact_headers: {name!r} is not a header name")
        if len(names) > 60:
            raise ValueError("tap_redact_headers: at most 60 names")
        return self

    @model_validator(mode="after")
    def _tunnel_reachable(self) -> Settings:
        if self.tunnel_advertise is None and self.tunnel_host in ("0.0.0.0", "::", ""):
            raise ValueError("tunnel_host is a wildcard: set tunnel_advertise to the address "
                             "proxies can dial (the pod IP)")
        return self

    def tunnel_advertised(self) -> str:
        return self.tunnel_advertise or self.tunnel_host

    @model_validator(mode="after")
    def _notifications_signed(self) -> Settings:
        for url in self.notify_url_list():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"notify_urls: {url!r} is not an http(s) URL")
        if self.notify_url_list() and not self.notify_secret:
            raise ValueError("notify_urls needs notify_secret (deliveries are signed)")
        return self

    @field_validator("listen", "grpc")
    @classmethod
    def _hostport(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v == "sqlite" or v.startswith(("sqlite:", "postgresql://", "postgres://")):
            return v
        raise ValueError("expected 'sqlite', 'sqlite:PATH' or 'postgresql://…'")

    @field_validator("default_sandbox_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        ttl_seconds(v)
        return v

    def default_ttl_seconds(self) -> int:
        return ttl_seconds(self.default_sandbox_ttl)

    @field_validator("admin_token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("at least 16 characters")
        return v

    def sqlite_path(self) -> Path:
        """The SQLite file this configuration names (only meaningful for SQLite stores)."""
        if self.store.startswith("sqlite:"):
            return Path(self.store.removeprefix("sqlite:"))
        return self.data_dir / "forklane.db"

    def store_label(self) -> str:
        """How the store is named in the start-up line (no credentials)."""
        if self.store.startswith(("postgresql://", "postgres://")):
            scheme, _, rest = self.store.partition("://")
            return f"{scheme}://{rest.rpartition('@')[2]}"
        return f"sqlite:{self.sqlite_path()}"
