"""Proxy settings: parsed once at start from flags and `FORKLANE_*` environment variables.

Nothing else in the proxy reads `os.environ`, argv or files for configuration. The routing
table (what goes where) is not a setting: it comes from the config file or the control plane
and can change at run time; settings (ports, limits, identity) are fixed for the process.

Every setting is both a flag of `forklane proxy run` (`--max-header-bytes`) and an environment
variable (`FORKLANE_MAX_HEADER_BYTES`): `add_setting_flags` makes a flag for every field that
has no hand-written one, so the two cannot drift apart (the README's table is checked against
both by a test).
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from forklane.proxy.schema import parse_endpoint

__all__ = ["DEFAULT_OPAQUE_PORTS", "ProxySettings", "UsageError", "add_setting_flags", "flag_of"]

# Linkerd's default opaque ports: SMTP, SMTP submission, MySQL, Galera, PostgreSQL, Redis,
# Elasticsearch transport, memcached. Server-first protocols among them (SMTP, MySQL) would
# otherwise wait for the detection timeout before anything flows.
DEFAULT_OPAQUE_PORTS = (25, 587, 3306, 4444, 5432, 6379, 9300, 11211)


def flag_of(field: str) -> str:
    """The flag of a setting: `max_header_bytes` → `--max-header-bytes`."""
    return "--" + field.replace("_", "-")


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    return isinstance(annotation, types.UnionType) and bool in args and len(args) == 2


def add_setting_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    skip: Iterable[str] = (),
    metavars: Mapping[str, str] | None = None,
) -> None:
    """A flag for every field of `model` not in `skip` (those have hand-written flags).

    Values stay text (pydantic converts and validates them with the environment's rules);
    booleans get `--x/--no-x`. Every default is None, so "not given" leaves the environment
    or the model default in charge.
    """
    skipped = set(skip)
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        help_text = field.description or ""
        if field.default is not None and not callable(field.default_factory):
            help_text += f" (default {field.default})" if help_text else f"default {field.default}"
        if _is_bool(field.annotation):
            parser.add_argument(flag_of(name), dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)  # fmt: skip
        else:
            metavar = (metavars or {}).get(name, name.upper())
            parser.add_argument(flag_of(name), dest=name, metavar=metavar, help=help_text)


class UsageError(Exception):
    """Invalid settings or configuration at start: one line on stderr, exit status 2."""


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORKLANE_", frozen=True, extra="ignore")

    # --- where routing comes from (one of the two) ---
    config: Path | None = Field(None, description="static routing file (YAML or JSON)")
    controlplane: str | None = Field(None, description="control plane gRPC address host:port")
    controlplane_token: str | None = Field(
        None, description="bearer token for the control plane (a proxy token); prefer the "
        "environment or controlplane_token_file: a flag is visible in ps",
    )
    controlplane_token_file: Path | None = Field(
        None,
        description="read the control-plane token from this file (a mounted secret, a "
        "projected ServiceAccount token): checked at start, read again for every stream, so "
        "the token kubelet rotated is the one presented; controlplane_token wins over it",
    )
    controlplane_keepalive: float = Field(
        20.0, gt=0, le=3600,
        description="seconds between keepalive pings to the control plane; keep it above the "
        "control plane's grpc_min_ping_interval",
    )
    activity_interval: float = Field(
        5.0, gt=0, le=3600,
        description="seconds between reports of the routing keys seen (sandboxes with "
        "ttl since lastActivity end after that long unseen)",
    )
    state_dir: Path | None = Field(
        None, description="where the last ACKed snapshot is kept for a cold start"
    )
    node_id: str = Field("", description="this sidecar's name at the control plane")

    # --- identity and listeners ---
    service: str | None = Field(None, description="the local service this sidecar stands beside")
    namespace: str | None = Field(
        None,
        description="the pod's Kubernetes namespace: bare Service names of this namespace "
        "resolve (as cluster DNS resolves them only there)",
    )
    local_app: str | None = Field(None, description="host:port of the local app (inbound target)")
    bind: str | None = Field(
        None, description="listen address, or several comma-separated (default 127.0.0.1; "
        "with capture 0.0.0.0, plus :: where the network namespace has a global IPv6 address)"
    )
    outbound_bind: str | None = Field(
        None, description="addresses of the outbound listener only, comma-separated, or "
        "'loopback' (127.0.0.1, plus ::1 where the network namespace has a global IPv6 "
        "address); default: 'loopback' with capture (redirected connections arrive on the "
        "loopback address, so other pods cannot use the sidecar as an open proxy), else bind",
    )
    outbound_port: int | None = Field(15001, ge=0, le=65535, description="'off' disables it")
    inbound_port: int | None = Field(
        15006, ge=0, le=65535, description="needs service and local_app; 'off' disables it"
    )
    admin_port: int | None = Field(15000, ge=0, le=65535, description="'off' disables it")
    workers: int = Field(1, ge=1, le=64, description="processes sharing the ports (SO_REUSEPORT)")

    # --- HTTP limits (Envoy's defaults where they exist) ---
    max_header_bytes: int = Field(
        60 * 1024, ge=1024, le=1024 * 1024, description="request headers over this → 431"
    )
    max_header_count: int = Field(100, ge=8, le=10_000, description="more header fields → 431")
    header_timeout: float = Field(10.0, gt=0, le=600, description="slow request headers → 408")
    idle_timeout: float = Field(
        60.0, gt=0, le=3600, description="idle keep-alive connections close after this, s"
    )
    max_pipelined: int = Field(
        16, ge=1, le=1024, description="pipelined requests queued per connection"
    )
    body_timeout: float = Field(
        20.0, gt=0, le=3600, description="a request body gets this long, plus a second per "
        "`min_body_rate` bytes received, before it is cut with 408 (HTTP/1.1)",
    )
    min_body_rate: int = Field(
        500, ge=0, le=1 << 30, description="bytes/s a request body must keep up; 0: no limit"
    )

    # --- overload ---
    max_connections: int = Field(
        50_000, ge=1, le=10_000_000,
        description="client connections open across all listeners; more are reset at accept",
    )
    listener_max_connections: int = Field(
        0, ge=0, le=10_000_000, description="client connections per listener; 0: no own cap"
    )
    memory_watermark_mb: int | None = Field(
        None, ge=0, le=1_048_576,
        description="resident memory above which new requests get 503 `overloaded` and new "
        "connections are reset; unset: 90 percent of the container's memory limit (none: off); 0: off",
    )

    # --- HTTP/2 and TLS (h2c with prior knowledge is always on; TLS+ALPN when a cert is set) ---
    tls_cert: Path | None = Field(None, description="PEM certificate chain: serve TLS with ALPN h2")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    h2_rapid_reset_threshold: int = Field(
        100, ge=1, le=100_000,
        description="GOAWAY once this many streams were reset by the client before their "
        "response completed (and they are at least half of the connection's streams)",
    )
    h2_control_frame_budget: int = Field(
        1000, ge=10, le=1_000_000,
        description="control frames (SETTINGS, PING, PRIORITY, WINDOW_UPDATE, RST_STREAM, "
        "empty DATA/CONTINUATION) a connection may send per ~10 s beyond what its streams and "
        "the data sent to it earn; over it: GOAWAY(ENHANCE_YOUR_CALM)",
    )
    h2_abuse_memory_seconds: float = Field(
        60.0, ge=0, le=3600,
        description="how long a peer caught flooding or rapid-resetting keeps a reduced budget "
        "on its next connections",
    )
    h2_validate_headers: bool = Field(
        True, description="check inbound HTTP/2 request heads (lowercase names, pseudo-header "
        "fields known, single and first, no NUL/CR/LF in values): a malformed one is a 400"
    )

    # --- traffic capture (connections redirected by `forklane proxy capture`) ---
    capture: bool = Field(
        False, description="the listeners receive connections redirected by nat rules: route "
        "what forklane knows, relay everything else untouched to its original destination",
    )
    capture_detect_timeout: float = Field(
        1.0, gt=0, le=60, description="how long a captured connection may stay silent before "
        "it is relayed as an opaque (server-first) protocol",
    )
    capture_opaque_ports: Annotated[tuple[int, ...], NoDecode] = Field(
        DEFAULT_OPAQUE_PORTS, description="destination ports relayed at once, without protocol "
        "detection (comma-separated; '' for none)",
    )
    relay_connect_timeout: float = Field(10.0, gt=0, le=300)
    relay_idle_timeout: float = Field(3600.0, gt=0, le=86_400)

    # --- upstream behaviour ---
    max_idle_per_endpoint: int = Field(
        64, ge=0, le=10_000, description="idle upstream connections kept per endpoint"
    )
    retries: int = Field(2, ge=0, le=5, description="retries after a connect failure")
    outlier_consecutive_failures: int = Field(
        5, ge=1, le=1000, description="failures in a row that eject an endpoint"
    )
    outlier_ejection_seconds: float = Field(
        10.0, gt=0, le=3600, description="how long an ejected endpoint is left out"
    )

    # --- routing security ---
    edge: bool = Field(
        False, description="this proxy takes requests from outside the mesh (an ingress "
        "sidecar): a routing key it cannot verify as signed is removed before forwarding, and "
        "without signing in the snapshot no outside key reaches a fork",
    )

    # --- behaviour switches ---
    access_log: bool = Field(False, description="one JSON line per request on stdout")
    explain_header: str | None = Field(
        None,
        description="when a request carries this header, the response says how it was routed",
    )
    reload_poll_seconds: float = Field(
        1.0, gt=0, le=300, description="how often the routing file is checked for changes"
    )
    drain_seconds: float = Field(
        5.0, ge=0, le=600, description="on SIGTERM, how long requests in flight may finish"
    )
    drain_accept_seconds: float = Field(
        0.0, ge=0, le=60, description="keep accepting this long after readiness fails"
    )
    seed: int | None = Field(None, description="seed of the split/mirror RNG (tests only)")
    hot_path: Literal["auto", "compiled", "interpreted"] = Field(
        "auto",
        description="run the compiled request path (built with Cython where a C compiler "
        "exists) or the same code interpreted; auto: compiled when installed",
    )

    # --- context propagation (all off by default: then the request path pays nothing) ---
    trace_repair: bool = Field(
        False, description="restore a dropped routing key from the trace it belongs to"
    )
    trace_gaps: bool = Field(
        False, description="count outbound requests of a keyed trace that lost the key"
    )
    trace_memory_size: int = Field(
        100_000, ge=1, le=10_000_000, description="traces remembered for trace repair"
    )
    trace_memory_ttl: float = Field(
        300.0, gt=0, le=86_400, description="seconds a trace is remembered"
    )
    tracing: bool = Field(
        False, description="one OpenTelemetry span per proxied request (OTLP, OTEL_* env)"
    )

    @model_validator(mode="before")
    @classmethod
    def _token_file(cls, data: Any) -> Any:
        """A token file that cannot be read is a usage error at start (an explicit token wins
        over the file). The subscriber reads it again for every stream, because kubelet
        rotates projected tokens; nothing here keeps its content."""
        if not isinstance(data, dict) or not data.get("controlplane_token_file"):
            return data
        if data.get("controlplane_token"):
            return {**data, "controlplane_token_file": None}
        path = Path(data["controlplane_token_file"])
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"controlplane_token_file {path}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"controlplane_token_file {path} is empty")
        return data

    @field_validator("local_app")
    @classmethod
    def _app(cls, v: str | None) -> str | None:
        if v is not None:
            parse_endpoint(v)
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> ProxySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @model_validator(mode="after")
    def _capture_fits(self) -> ProxySettings:
        if not self.capture:
            return self
        if self.tls_cert is not None:
            raise ValueError("capture relays TLS as the client sent it: the listeners cannot "
                             "terminate TLS too (drop tls_cert or capture)")
        if self.local_app is not None:
            host, _ = parse_endpoint(self.local_app)
            if host not in ("127.0.0.1", "::1", "localhost"):
                # Anything else would be captured again on its way to the app (a loop).
                raise ValueError(f"with capture, local_app must be on loopback "
                                 f"(127.0.0.1:PORT), not {self.local_app}")
        return self

    @field_validator("capture_opaque_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> Any:
        if isinstance(v, str):
            items = [item.strip() for item in v.split(",") if item.strip()]
            if not all(item.isdigit() and 0 < int(item) < 65536 for item in items):
                raise ValueError(f"{v!r}: expected comma-separated port numbers 1..65535")
            return tuple(int(item) for item in items)
        return v

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str | None) -> str | None:
        if v is not None and not [h for h in v.split(",") if h.strip()]:
            raise ValueError("bind: give at least one address")
        return v

    def listen_hosts(self, ipv6_present: bool) -> list[str]:
        """The addresses the listeners bind. Captured inbound connections arrive on the pod's
        own address, so capture listens on every address (IPv6 too where the pod has it)."""
        if self.bind is not None:
            return [h.strip() for h in self.bind.split(",") if h.strip()]
        if self.capture:
            return ["0.0.0.0", "::"] if ipv6_present else ["0.0.0.0"]
        return ["127.0.0.1"]

    @field_validator("outbound_bind")
    @classmethod
    def _outbound_bind(cls, v: str | None) -> str | None:
        if v is not None and not [h for h in v.split(",") if h.strip()]:
            raise ValueError("outbound_bind: give 'loopback' or at least one address")
        return v

    def outbound_hosts(self, ipv6_present: bool) -> list[str]:
        """The addresses the outbound listener binds. Under capture, nat rules redirect the
        app's own connections to the loopback address (REDIRECT maps locally made packets to
        127.0.0.1 and ::1), so the outbound listener needs no other, and must have none: on
        the pod's address any other pod could send requests into the mesh through it."""
        wanted = self.outbound_bind or ("loopback" if self.capture else None)
        if wanted is None:
            return self.listen_hosts(ipv6_present)
        hosts: list[str] = []
        for h in (part.strip() for part in wanted.split(",")):
            if h == "loopback":
                hosts += ["127.0.0.1", "::1"] if ipv6_present else ["127.0.0.1"]
            elif h:
                hosts.append(h)
        return hosts

    @field_validator("explain_header")
    @classmethod
    def _explain(cls, v: str | None) -> str | None:
        return v.lower() if v else v
