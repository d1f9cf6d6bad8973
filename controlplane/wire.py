"""Wire schemas of the control-plane REST API (`/api/v1`): the contract the SDK speaks.

Every resource follows Kubernetes conventions: `apiVersion`, `kind`, `metadata` (name, uid,
generation, resourceVersion, labels, createdBy, timestamps; `tenant` for sandboxes and route
groups), `spec` (what the user wants) and
`status` (what the control plane observed). The SDK imports this module and nothing else of
the control plane; it depends only on pydantic and the standard library.

Invariants:
- `metadata.generation` grows by one on every spec change; `status.observedGeneration` says
  which generation the status describes.
- `metadata.resourceVersion` changes on every write (spec or status); an update that names an
  older one is rejected with 409.
- Error bodies always have the `ErrorBody` shape.
- A service discovered from Kubernetes is named `NAME.NAMESPACE` (service names may hold
  dots; other names are DNS labels), carries `spec.discovered`, and is written only by the
  control plane's discovery: the REST API refuses to create, change or delete one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "API_VERSION",
    "AuditList",
    "AuditRecord",
    "CircuitBreakersSpec",
    "Condition",
    "ConnectionStatus",
    "ContainerCustomization",
    "Customizations",
    "DiscoveredFrom",
    "EnvValueFrom",
    "EnvVar",
    "ErrorBody",
    "ErrorDetail",
    "Event",
    "EventList",
    "FieldError",
    "ForkSpec",
    "HeaderMatchSpec",
    "HealthCheckSpec",
    "Identity",
    "ListMeta",
    "MatchSpec",
    "Metadata",
    "MirrorSpec",
    "OutlierDetectionSpec",
    "PodSummary",
    "ProxyInfo",
    "ProxyList",
    "ResourceList",
    "RetryPolicySpec",
    "Route",
    "RouteCarrier",
    "RouteGroup",
    "RouteGroupSpec",
    "RouteGroupStatus",
    "RouteList",
    "RouteMetadata",
    "RouteSpec",
    "Sandbox",
    "SandboxSpec",
    "SandboxStatus",
    "ServiceMetadata",
    "ServicePortSpec",
    "ServiceResource",
    "ServiceSpec",
    "ServiceStatus",
    "Split",
    "SplitDestinationSpec",
    "SplitSpec",
    "SplitStatus",
    "StickySpec",
    "TimeoutsSpec",
    "TokenInfo",
    "TokenList",
    "TokenRequest",
    "TokenResponse",
    "TtlSpec",
    "VersionInfo",
    "WatchEvent",
    "WorkloadRef",
    "WorkloadStatus",
]

API_VERSION: Final = "forklane.dev/v1"

NAME_PATTERN = r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$"
# Service names may hold dots: a discovered one is NAME.NAMESPACE (a DNS subdomain).
SERVICE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$"
ROUTING_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"
SUBJECT_PATTERN = r"^[A-Za-z0-9@._:\-]+$"  # who a token is
# A tenant (team, namespace) is a DNS label, as a Kubernetes namespace is.
Tenant = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63, examples=["payments"])]
Subject = Annotated[str, Field(min_length=1, max_length=253, pattern=SUBJECT_PATTERN)]
# A TCP port, 1..65535, as the pattern itself states it (so the OpenAPI document and the
# server agree without a hidden check).
PORT_PATTERN = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
HOST_PATTERN = r"(?:\[[0-9a-fA-F:.]{2,45}\]|[A-Za-z0-9.\-_]{1,253})"
ENDPOINT_PATTERN = rf"^{HOST_PATTERN}:{PORT_PATTERN}$"
AUTHORITY_PATTERN = rf"^{HOST_PATTERN}(?::{PORT_PATTERN})?$"
# Longest `[v6]:port` or `host:port`: a 253-character DNS name, a colon, five digits.
MAX_ENDPOINT = 253 + 1 + 5
MAX_TEXT = 4096
MAX_LABELS = 64

# The one rule for every endpoint the API takes (forks, services, ports, splits, mirrors,
# draining): `host:port` or `[v6]:port`, port 1..65535, the proxy's `parse_endpoint` rule.
Endpoint = Annotated[
    str, Field(pattern=ENDPOINT_PATTERN, max_length=MAX_ENDPOINT, examples=["127.0.0.1:8080"])
]
Authority = Annotated[
    str, Field(pattern=AUTHORITY_PATTERN, max_length=MAX_ENDPOINT, examples=["web.example:8080"])
]
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=r"^[A-Za-z0-9._/\-]+$")]
LabelValue = Annotated[str, Field(max_length=253)]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
TOKEN_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~\-]+$"  # RFC 9110 token: header names, methods
HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=TOKEN_PATTERN)]
Method = Annotated[str, Field(min_length=1, max_length=32, pattern=TOKEN_PATTERN)]
ShortName = Annotated[str, Field(min_length=1, max_length=253)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(_Model):
    """Set `name` and `labels` (and `tenant`, which a developer may only name as its own);
    the server fills in the rest."""

    name: str = Field(
        pattern=NAME_PATTERN, max_length=63,
        description="DNS label, unique per resource kind across all tenants",
    )
    labels: Labels = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = Field(None, alias="resourceVersion")
    created_by: str | None = Field(None, alias="createdBy")
    creation_timestamp: datetime | None = Field(None, alias="creationTimestamp")
    update_timestamp: datetime | None = Field(None, alias="updateTimestamp")
    deletion_timestamp: datetime | None = Field(None, alias="deletionTimestamp")
    tenant: Tenant | None = Field(
        None, description="sandboxes and route groups: the team or namespace the object "
        "belongs to; the creating token's unless an admin names one (admins: `default`), "
        "fixed once created. Services and splits are shared by every tenant and have none",
    )


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = Field(None, alias="lastTransitionTime")


class CircuitBreakersSpec(_Model):
    """Per-destination limits; a request over one gets 503 `circuit-open` (Envoy's defaults)."""

    max_connections: int = Field(1024, ge=1, le=1_000_000, alias="maxConnections")
    max_pending_requests: int = Field(1024, ge=1, le=1_000_000, alias="maxPendingRequests")
    max_requests: int = Field(1024, ge=1, le=1_000_000, alias="maxRequests")
    max_retries: int = Field(3, ge=0, le=1_000_000, alias="maxRetries")


class OutlierDetectionSpec(_Model):
    """Passive health: failures in a row eject an endpoint, with backoff, up to a share."""

    consecutive_5xx: int = Field(5, ge=0, le=1000, alias="consecutive5xx")
    consecutive_gateway_errors: int = Field(0, ge=0, le=1000, alias="consecutiveGatewayErrors")
    base_ejection_seconds: float = Field(30.0, gt=0, le=3600, alias="baseEjectionSeconds")
    max_ejection_seconds: float = Field(300.0, gt=0, le=86_400, alias="maxEjectionSeconds")
    max_ejection_percent: int = Field(10, ge=0, le=100, alias="maxEjectionPercent")


RetryOn = Literal[
    "5xx", "gateway-error", "retriable-status-codes",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
]
_GATEWAY_ERROR: RetryOn = "gateway-error"


class RetryPolicySpec(_Model):
    """Retries after an answer for idempotent requests without a body; off by default."""

    attempts: int = Field(0, ge=0, le=10)
    retry_on: list[RetryOn] = Field(default_factory=lambda: [_GATEWAY_ERROR], alias="retryOn")
    statuses: list[int] = Field(default_factory=list, description="500..599")
    per_try_timeout: float | None = Field(None, gt=0, le=3600, alias="perTryTimeout")
    budget_percent: float = Field(20.0, ge=0, le=100, alias="budgetPercent")
    min_retry_concurrency: int = Field(3, ge=0, le=1_000_000, alias="minRetryConcurrency")
    header_overrides: bool = Field(
        False, alias="headerOverrides", description="honour a request's x-forklane-retry-on"
    )
    per_request_buffer_limit_bytes: int = Field(
        65536, ge=0, le=16 * 1024 * 1024, alias="perRequestBufferLimitBytes",
        description="request body kept for a gRPC-status retry; larger: not retried",
    )


class HealthCheckSpec(_Model):
    """Active health: each endpoint probed every interval (an HTTP GET of `path`, or a TCP
    connect); `unhealthyThreshold` failures in a row take it out of rotation,
    `healthyThreshold` successes bring it back. Off unless set."""

    kind: Literal["http", "tcp"] = "http"
    path: str | None = Field(None, pattern=r"^/[!-~]*$", max_length=1024,
                             description="http: the path probed")
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, max_length=64, alias="expectedStatuses",
        description="http: unset means any 2xx",
    )
    interval_seconds: float = Field(5.0, ge=0.05, le=3600, alias="intervalSeconds")
    timeout_seconds: float = Field(1.0, gt=0, le=60, alias="timeoutSeconds")
    unhealthy_threshold: int = Field(3, ge=1, le=100, alias="unhealthyThreshold")
    healthy_threshold: int = Field(2, ge=1, le=100, alias="healthyThreshold")
    jitter_seconds: float = Field(0.0, ge=0, le=60, alias="jitterSeconds")

    @model_validator(mode="after")
    def _kind(self) -> HealthCheckSpec:
        if self.kind == "http" and self.path is None:
            raise ValueError("path: an http health check needs a path")
        if self.kind == "tcp" and (self.path is not None or self.expected_statuses):
            raise ValueError("a tcp health check has no path or expectedStatuses")
        return self


class TimeoutsSpec(_Model):
    connect: float = Field(1.0, gt=0, le=60)
    request: float = Field(15.0, gt=0, le=3600)
    idle: float = Field(60.0, gt=0, le=3600)


# --- sandboxes -------------------------------------------------------------------------------


K8S_NAME_PATTERN = r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$"  # DNS label (namespaces, containers)
K8S_SUBDOMAIN_PATTERN = r"^[a-z0-9]([a-z0-9.\-]{0,251}[a-z0-9])?$"  # Deployment, ConfigMap names
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"  # what the API server accepts for env names
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class WorkloadRef(_Model):
    """The baseline workload a fork copies. Deployments only (StatefulSets and Argo Rollouts
    are not supported yet: their pods have identities a copy must not take)."""

    kind: Literal["Deployment"] = "Deployment"
    namespace: str = Field(pattern=K8S_NAME_PATTERN)
    name: str = Field(pattern=K8S_SUBDOMAIN_PATTERN, max_length=253)


class KeyRef(_Model):
    name: str = Field(pattern=K8S_SUBDOMAIN_PATTERN, max_length=253)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = None


class EnvValueFrom(_Model):
    """A value read from a ConfigMap or a Secret in the workload's namespace."""

    config_map_key_ref: KeyRef | None = Field(None, alias="configMapKeyRef")
    secret_key_ref: KeyRef | None = Field(None, alias="secretKeyRef")

    @model_validator(mode="after")
    def _one(self) -> EnvValueFrom:
        if (self.config_map_key_ref is None) == (self.secret_key_ref is None):
            raise ValueError("exactly one of configMapKeyRef or secretKeyRef")
        return self


class EnvVar(_Model):
    name: str = Field(pattern=ENV_NAME_PATTERN, max_length=256)
    value: str | None = None
    value_from: EnvValueFrom | None = Field(None, alias="valueFrom")

    @model_validator(mode="after")
    def _one(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("value and valueFrom are exclusive")
        return self


Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, examples=["100m", "128Mi"])]
ResourceName = Literal["cpu", "memory", "ephemeral-storage"]


class ResourcesSpec(_Model):
    requests: dict[ResourceName, Quantity] | None = None
    limits: dict[ResourceName, Quantity] | None = None


class ContainerCustomization(_Model):
    """Changes to one container of the baseline's pod template (named as in the template)."""

    name: str = Field(pattern=K8S_NAME_PATTERN)
    image: str | None = Field(None, min_length=1, max_length=1024, pattern=r"^\S+$")
    env: list[EnvVar] = Field(default_factory=list, description="set or override variables")
    args: list[str] | None = Field(None, description="replaces the container's args")
    resources: ResourcesSpec | None = Field(None, description="replaces the requests/limits given")

    @field_validator("env")
    @classmethod
    def _unique_env(cls, v: list[EnvVar]) -> list[EnvVar]:
        seen: dict[str, int] = {}
        for i, var in enumerate(v):
            if var.name in seen:
                raise ValueError(f"env[{i}]: {var.name!r} is set twice (also env[{seen[var.name]}])")
            seen[var.name] = i
        return v


class Customizations(_Model):
    replicas: int = Field(1, ge=1, le=20)
    containers: list[ContainerCustomization] = Field(default_factory=list)

    @field_validator("containers")
    @classmethod
    def _unique_containers(
        cls, v: list[ContainerCustomization]
    ) -> list[ContainerCustomization]:
        seen: dict[str, int] = {}
        for i, c in enumerate(v):
            if c.name in seen:
                raise ValueError(
                    f"containers[{i}]: container {c.name!r} is customized twice "
                    f"(also containers[{seen[c.name]}])")
            seen[c.name] = i
        return v


class ForkSpec(_Model):
    """One forked service: where the fork runs. Either `endpoints` someone runs, `forkOf`
    a baseline workload that forklane copies (with `customizations`) in the cluster, or
    `local`: a developer's machine attached with `forklane connect` (routed only while it
    is connected; any fork is routed to the tunnel while one is)."""

    service: str = Field(pattern=SERVICE_NAME_PATTERN, max_length=253)
    endpoints: list[Endpoint] = Field(default_factory=list)
    fork_of: WorkloadRef | None = Field(None, alias="forkOf")
    customizations: Customizations | None = None
    fallback: Literal["baseline", "fail"] | None = Field(
        None, description="overrides the sandbox's fallback for this fork"
    )
    local: bool | None = Field(
        None, description="served by `forklane connect` from a developer's machine; no "
        "route (the baseline answers) while nothing is connected"
    )

    @model_validator(mode="after")
    def _where(self) -> ForkSpec:
        if self.local and (self.endpoints or self.fork_of is not None):
            raise ValueError("local forks name no endpoints and no forkOf (forklane connect "
                             "supplies the endpoint)")
        if self.fork_of is None and not self.endpoints and not self.local:
            raise ValueError("give endpoints, forkOf naming a Deployment, or local: true")
        if self.fork_of is not None and self.endpoints:
            raise ValueError("endpoints and forkOf are exclusive")
        if self.fork_of is None and self.customizations is not None:
            raise ValueError("customizations apply to a forkOf workload only")
        return self


class TtlSpec(_Model):
    """`since: lastActivity`: the sandbox ends `seconds` after its key was last seen by a
    proxy (or after its creation, if never)."""

    seconds: int = Field(gt=0, le=30 * 24 * 3600)
    since: Literal["creation", "update", "lastActivity"] = "creation"


class FaultSpec(_Model):
    """A fault for this sandbox's own requests to `service` (requests without its key are
    never touched): abort with `abortStatus` (gRPC calls get `grpcStatus` when set), or hold
    them `delayMs`, for `percent` % of them."""

    service: str = Field(pattern=SERVICE_NAME_PATTERN)
    percent: float = Field(100.0, gt=0, le=100)
    abort_status: int | None = Field(None, alias="abortStatus", ge=400, le=599)
    grpc_status: int | None = Field(None, alias="grpcStatus", ge=1, le=16)
    delay_ms: int | None = Field(None, alias="delayMs", ge=1, le=60_000)

    @model_validator(mode="after")
    def _one_effect(self) -> FaultSpec:
        aborts = self.abort_status is not None or self.grpc_status is not None
        if aborts == (self.delay_ms is not None):
            raise ValueError("a fault either aborts (abortStatus / grpcStatus) or delays "
                             "(delayMs)")
        return self


class SandboxSpec(_Model):
    forks: list[ForkSpec] = Field(min_length=1)
    faults: list[FaultSpec] | None = Field(
        None, description="faults injected into this sandbox's own requests"
    )
    routing_key: str | None = Field(
        None,
        alias="routingKey",
        pattern=ROUTING_KEY_PATTERN,
        max_length=128,
        description="generated (128 bits, [a-z0-9]) when omitted",
    )
    ttl: TtlSpec | None = None
    fallback: Literal["baseline", "fail"] = Field(
        "fail", description="when a fork is unreachable: send to baseline, or answer 503"
    )
    description: Text = ""
    shared_with: list[Subject] | None = Field(
        None, alias="sharedWith", max_length=64,
        description="subjects of the same tenant whose route groups may select this sandbox "
        "(a group selects only its creator's own sandboxes and those shared with it)",
    )

    @field_validator("forks")
    @classmethod
    def _unique_services(cls, v: list[ForkSpec]) -> list[ForkSpec]:
        services = [f.service for f in v]
        if len(set(services)) != len(services):
            raise ValueError("a service may be forked once per sandbox")
        baselines: dict[tuple[str, str, str], int] = {}
        for i, f in enumerate(v):
            if f.fork_of is None:
                continue
            ref = (f.fork_of.kind, f.fork_of.namespace, f.fork_of.name)
            if ref in baselines:
                raise ValueError(
                    f"forks[{i}].forkOf: {ref[0]} {ref[1]}/{ref[2]} is forked twice "
                    f"(also forks[{baselines[ref]}])")
            baselines[ref] = i
        return v

    @field_validator("faults")
    @classmethod
    def _one_fault_per_service(cls, v: list[FaultSpec] | None) -> list[FaultSpec] | None:
        services = [f.service for f in v or ()]
        if len(set(services)) != len(services):
            raise ValueError("one fault per service per sandbox")
        return v


class ForkStatus(_Model):
    service: str
    ready: bool
    message: str = ""


class PodSummary(_Model):
    name: str
    phase: str = ""
    ready: bool = False
    ip: str | None = None
    reason: str = Field("", description="why it is not ready (ImagePullBackOff, …)")
    message: str = ""
    restarts: int = 0


class WorkloadStatus(_Model):
    """What the fork controller last saw of one fork workload in the cluster."""

    service: str
    kind: Literal["Deployment"] = "Deployment"
    namespace: str
    name: str = Field(description="the fork workload's name (`<baseline>-fl-<hash>`)")
    fork_of: str = Field(alias="forkOf", description="NAMESPACE/NAME of the baseline")
    generation: int = Field(description="the sandbox generation it was made from")
    created: bool = False
    available: bool = False
    replicas: int = 0
    ready_replicas: int = Field(0, alias="readyReplicas")
    endpoints: list[str] = Field(default_factory=list, description="ready pods, IP:port")
    pods: list[PodSummary] = Field(default_factory=list)
    reason: str = ""
    message: str = ""


class ConnectionStatus(_Model):
    """A fork served through `forklane connect`, written by the control-plane replica that
    holds the tunnel."""

    service: str
    endpoint: str = Field(description="the tunnel endpoint proxies are routed to")
    host: str = Field(description="the developer's machine")
    since: datetime
    state: Literal["connected", "reconnecting"] = "connected"
    replica: str = ""
    session: str = ""


class SandboxStatus(_Model):
    phase: Literal["Pending", "Ready", "Failed", "Terminating"] = "Pending"
    routing_key: str | None = Field(None, alias="routingKey")
    observed_generation: int | None = Field(None, alias="observedGeneration")
    expires_at: datetime | None = Field(None, alias="expiresAt")
    last_activity: datetime | None = Field(
        None, alias="lastActivity", description="when a proxy last reported the key (ttl since)"
    )
    forks: list[ForkStatus] = Field(default_factory=list)
    workloads: list[WorkloadStatus] = Field(
        default_factory=list, description="fork workloads in the cluster (forkOf forks)")
    connections: list[ConnectionStatus] | None = Field(
        None, description="forks served through forklane connect")
    conditions: list[Condition] = Field(default_factory=list)


class Sandbox(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Sandbox"] = "Sandbox"
    metadata: Metadata
    spec: SandboxSpec
    status: SandboxStatus | None = None


# --- route groups ----------------------------------------------------------------------------


class RouteGroupSpec(_Model):
    """One routing key joining the forks of every sandbox whose labels match `selector`, of
    the group's tenant, that its creator may use (its own, or shared with it)."""

    selector: Labels = Field(min_length=1, description="sandbox labels to match")
    routing_key: str | None = Field(
        None, alias="routingKey", pattern=ROUTING_KEY_PATTERN, max_length=128
    )
    fallback: Literal["baseline", "fail"] = "baseline"


class RouteGroupStatus(_Model):
    phase: Literal["Pending", "Ready", "Failed"] = "Pending"
    routing_key: str | None = Field(None, alias="routingKey")
    observed_generation: int | None = Field(None, alias="observedGeneration")
    sandboxes: list[str] = Field(default_factory=list)
    not_selected: int | None = Field(
        None, alias="notSelected", ge=1,
        description="how many sandboxes of the tenant match the selector but are neither the "
        "creator's nor shared with it (not selected; not named)",
    )
    conditions: list[Condition] = Field(default_factory=list)


class RouteGroup(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["RouteGroup"] = "RouteGroup"
    metadata: Metadata
    spec: RouteGroupSpec
    status: RouteGroupStatus | None = None


# --- splits ----------------------------------------------------------------------------------


class HeaderMatchSpec(_Model):
    name: HeaderName
    exact: Text | None = None
    prefix: Text | None = None
    present: bool | None = None


class MatchSpec(_Model):
    headers: list[HeaderMatchSpec] = Field(default_factory=list, max_length=64)
    path_prefix: Text | None = Field(None, alias="pathPrefix")
    methods: list[Method] = Field(default_factory=list, max_length=64)


class SplitDestinationSpec(_Model):
    name: ShortName
    weight: int = Field(ge=0, le=1_000_000)
    endpoints: list[Endpoint] = Field(min_length=1)
    circuit_breakers: CircuitBreakersSpec | None = Field(None, alias="circuitBreakers")
    outlier_detection: OutlierDetectionSpec | None = Field(None, alias="outlierDetection")
    retry_policy: RetryPolicySpec | None = Field(None, alias="retryPolicy")
    health_check: HealthCheckSpec | None = Field(None, alias="healthCheck")


class StickySpec(_Model):
    header: HeaderName | None = None
    cookie: HeaderName | None = None


class MirrorSpec(_Model):
    name: ShortName
    percent: float = Field(ge=0, le=100)
    endpoints: list[Endpoint] = Field(min_length=1)
    match: MatchSpec | None = None


class SplitSpec(_Model):
    """The traffic policy of one service: weighted destinations, stickiness, mirrors."""

    service: str = Field(pattern=SERVICE_NAME_PATTERN, max_length=253)
    match: MatchSpec | None = None
    destinations: list[SplitDestinationSpec] = Field(default_factory=list)
    sticky: StickySpec | None = None
    mirrors: list[MirrorSpec] = Field(default_factory=list)


class SplitStatus(_Model):
    phase: Literal["Pending", "Ready", "Failed"] = "Pending"
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)


class Split(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Split"] = "Split"
    metadata: Metadata
    spec: SplitSpec
    status: SplitStatus | None = None


# --- services --------------------------------------------------------------------------------


class ServiceMetadata(Metadata):
    name: str = Field(
        pattern=SERVICE_NAME_PATTERN,
        max_length=253,
        description="lowercase DNS subdomain; a discovered service is NAME.NAMESPACE",
    )


class ServicePortSpec(_Model):
    """Where traffic dialled to one port of the service goes (a Service port's targets)."""

    port: int = Field(ge=1, le=65535)
    name: Annotated[str, Field(max_length=63)] = ""
    endpoints: list[Endpoint] = Field(default_factory=list)


class DiscoveredFrom(_Model):
    """The Kubernetes Service a discovered service mirrors. Set by the control plane only."""

    kind: Literal["Service"] = "Service"
    namespace: Annotated[str, Field(max_length=63)]
    name: Annotated[str, Field(max_length=253)]
    cluster_ips: list[str] = Field(default_factory=list, alias="clusterIPs")
    draining: list[Endpoint] = Field(
        default_factory=list,
        description="serving but terminating endpoints: no new requests while a ready one exists",
    )


class ServiceSpec(_Model):
    """A baseline service. Hand-made ones need at least one endpoint; a discovered one may
    have none (scaled to zero: proxies answer 503 `no-endpoints`)."""

    authorities: list[Authority] = Field(default_factory=list)
    endpoints: list[Endpoint] = Field(default_factory=list)
    lb: Literal["round_robin", "least_request"] = "round_robin"
    timeouts: TimeoutsSpec | None = None
    circuit_breakers: CircuitBreakersSpec | None = Field(
        None, alias="circuitBreakers", description="also what the service's forks get"
    )
    outlier_detection: OutlierDetectionSpec | None = Field(
        None, alias="outlierDetection", description="also what the service's forks get"
    )
    retry_policy: RetryPolicySpec | None = Field(
        None, alias="retryPolicy", description="also what the service's forks get"
    )
    health_check: HealthCheckSpec | None = Field(
        None, alias="healthCheck", description="active health; also what the service's forks get"
    )
    namespace: str = Field(
        "", max_length=63, description="Kubernetes namespace of a discovered service"
    )
    namespace_authorities: list[Authority] = Field(
        default_factory=list,
        alias="namespaceAuthorities",
        description="names only pods of `namespace` dial (the bare Service name)",
    )
    ports: list[ServicePortSpec] = Field(default_factory=list)
    discovered: DiscoveredFrom | None = None

    @model_validator(mode="after")
    def _needs_endpoints(self) -> ServiceSpec:
        if self.discovered is None and not self.endpoints:
            raise ValueError("endpoints: at least one endpoint")
        return self


class ServiceStatus(_Model):
    phase: Literal["Pending", "Ready", "Failed"] = "Pending"
    observed_generation: int | None = Field(None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)


class ServiceResource(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Service"] = "Service"
    metadata: ServiceMetadata
    spec: ServiceSpec
    status: ServiceStatus | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _plain_metadata(cls, v: Any) -> Any:
        """A `Metadata` (what every other kind takes) is accepted and checked as a service's."""
        if isinstance(v, Metadata) and not isinstance(v, ServiceMetadata):
            return v.model_dump(by_alias=True, exclude_none=True)
        return v


# --- lists, proxies, errors ------------------------------------------------------------------

T = TypeVar("T")


class ListMeta(_Model):
    continue_: str | None = Field(None, alias="continue")
    resource_version: str | None = Field(None, alias="resourceVersion")


class ResourceList(_Model, Generic[T]):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: str
    items: list[T]
    metadata: ListMeta = ListMeta()


class ProxyInfo(_Model):
    node_id: str = Field(alias="nodeId")
    service: str | None = None
    listeners: list[str] = Field(default_factory=list)
    connected_at: datetime = Field(alias="connectedAt")
    sent_version: str | None = Field(None, alias="sentVersion")
    acked_version: str | None = Field(None, alias="ackedVersion")
    nacked_version: str | None = Field(None, alias="nackedVersion")
    last_error: str | None = Field(None, alias="lastError")
    replica: str | None = None
    version: str | None = Field(None, description="the forklane version the proxy runs")


class ProxyList(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["ProxyList"] = "ProxyList"
    items: list[ProxyInfo]


class FieldError(_Model):
    field: str
    message: str


class ErrorDetail(_Model):
    status: int
    reason: Literal[
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "Expired",
        "Invalid",
        "PreconditionFailed",
        "UnsupportedMediaType",
        "Unavailable",
        "TooManyRequests",
        "Internal",
    ]
    message: str
    details: list[FieldError] = Field(default_factory=list)


class ErrorBody(_Model):
    error: ErrorDetail


def dump(model: BaseModel) -> dict[str, Any]:
    """The JSON form the API speaks: aliases (camelCase), no nulls."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- tokens and audit (admin only) -----------------------------------------------------------


class TokenRequest(_Model):
    """Ask for a new bearer token for `subject` with `role`; a developer token acts in one
    `tenant` (default `default`), the other roles in every tenant."""

    subject: Subject
    role: Literal["admin", "developer", "proxy", "consumer"]
    tenant: Tenant | None = Field(None, description="developer tokens only")


class TokenInfo(_Model):
    """A token as listed: never its secret."""

    id: str
    subject: str
    role: Literal["admin", "developer", "proxy", "consumer"]
    tenant: str | None = Field(None, description="developer tokens: the tenant they act in")
    created_at: datetime = Field(alias="createdAt")
    created_by: str = Field(alias="createdBy")


class TokenList(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["TokenList"] = "TokenList"
    items: list[TokenInfo]


class Identity(_Model):
    """Who the presented token is (`GET /api/v1/whoami`)."""

    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Identity"] = "Identity"
    subject: str
    role: Literal["admin", "developer", "proxy", "consumer"]
    tenant: str | None = Field(None, description="developer tokens: the tenant they act in")


class VersionInfo(_Model):
    """`GET /version`: what this control-plane replica runs."""

    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Version"] = "Version"
    version: str
    replica: str


class Event(_Model):
    """Something that happened to an object, or to the snapshots carrying it."""

    time: datetime
    type: Literal["Normal", "Warning"] = "Normal"
    reason: str
    message: str = ""
    source: str = Field("", description="who: a subject, the reconciler, or a proxy's node id")


class EventList(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["EventList"] = "EventList"
    items: list[Event]


class WatchEvent(_Model):
    """One line of a watch stream (`GET /api/v1/<kind>?watch=true`)."""

    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
    object: dict[str, Any]


class TokenResponse(_Model):
    """The raw token is shown once; the control plane keeps only its hash."""

    kind: Literal["Token"] = "Token"
    id: str
    subject: str
    role: Literal["admin", "developer", "proxy", "consumer"]
    tenant: str | None = None
    token: str


class AuditRecord(_Model):
    seq: int
    at: datetime
    subject: str
    verb: str
    resource: str
    name: str
    generation_before: int | None = Field(None, alias="generationBefore")
    generation_after: int | None = Field(None, alias="generationAfter")
    resource_version: str | None = Field(None, alias="resourceVersion")


class AuditList(_Model):
    kind: Literal["AuditList"] = "AuditList"
    items: list[AuditRecord]
    continue_: str | None = Field(None, alias="continue")


# --- the routes view (read-only; what message consumers ask) ---------------------------------


class RouteSpec(_Model):
    """Messages with `routingKey` for `service` belong to the consumer of `sandbox`'s fork."""

    service: str
    routing_key: str = Field(alias="routingKey")
    sandbox: str = Field(description="the sandbox whose fork of the service takes the key")
    route_group: str | None = Field(
        None, alias="routeGroup", description="set when the key is a route group's"
    )


class RouteMetadata(_Model):
    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = Field(None, alias="resourceVersion")


class Route(_Model):
    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["Route"] = "Route"
    metadata: RouteMetadata
    spec: RouteSpec


class RouteCarrier(_Model):
    kind: Literal["header", "baggage", "tracestate"]
    name: str


class RouteList(_Model):
    """`GET /api/v1/routes`: every (service, key) fork of the published snapshot, and the
    carriers the proxies read, in priority order."""

    api_version: Literal["forklane.dev/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["RouteList"] = "RouteList"
    metadata: ListMeta
    carriers: list[RouteCarrier]
    items: list[Route]
