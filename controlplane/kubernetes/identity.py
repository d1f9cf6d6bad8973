"""A Kubernetes Service and its EndpointSlices → one discovered forklane service. Pure.

Naming: the service is `NAME.NAMESPACE`, so two Services of one name in two namespaces never
clash. Its authorities are everything an app may dial: `NAME.NAMESPACE`,
`NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.CLUSTER_DOMAIN`, each bare and with every Service
port, and every ClusterIP:port; the bare `NAME` (and `NAME:PORT`) are namespace authorities,
which only proxies of that namespace resolve (cluster DNS resolves a bare name only in the
pod's own namespace).

Endpoints (discovery.k8s.io/v1):
- a Service port maps to the EndpointSlice port of the same name (the EndpointSlice
  controller has already resolved a named `targetPort` per pod); a slice without that port
  name falls back to a numeric `targetPort`;
- only `ready` endpoints are routed (an unset condition counts as true, as the API reference
  says consumers must read it); `serving && terminating` endpoints are *draining*: they get
  no new requests while a ready endpoint exists, and are used when none is left (what
  kube-proxy does), so a rollout's last pods drain instead of being cut;
- only TCP ports are proxied; ExternalName Services have no endpoints and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forklane.controlplane import wire

__all__ = ["SERVICE_NAME_LABEL", "ServiceKey", "discovered_spec", "service_name"]

JSON = Mapping[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    namespace: str
    name: str


def service_name(key: ServiceKey) -> str:
    return f"{key.name}.{key.namespace}"


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _cond(conditions: JSON, name: str, default: bool) -> bool:
    value = conditions.get(name)
    return default if value is None else bool(value)


def _slice_port(slc: JSON, port: JSON) -> int | None:
    """The number a Service port's traffic goes to on this slice's endpoints."""
    name = port.get("name") or ""
    for sp in slc.get("ports") or ():
        if (sp.get("name") or "") == name and (sp.get("protocol") or "TCP") == "TCP":
            number = sp.get("port")
            return int(number) if isinstance(number, int) else None
    target = port.get("targetPort", port.get("port"))
    return target if isinstance(target, int) else None


def _endpoints(port: JSON, slices: Iterable[JSON]) -> tuple[list[str], list[str]]:
    """(ready, draining) addresses for one Service port."""
    ready: set[str] = set()
    draining: set[str] = set()
    for slc in slices:
        if slc.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue  # FQDN slices name hosts, not addresses
        number = _slice_port(slc, port)
        if number is None:
            continue
        for ep in slc.get("endpoints") or ():
            conditions = ep.get("conditions") or {}
            terminating = _cond(conditions, "terminating", False)
            is_ready = _cond(conditions, "ready", True) and not terminating
            serving = _cond(conditions, "serving", is_ready)
            for ip in ep.get("addresses") or ():
                if is_ready:
                    ready.add(_address(ip, number))
                elif serving and terminating:
                    draining.add(_address(ip, number))
    return sorted(ready), sorted(draining - ready)


def discovered_spec(
    service: JSON, slices: Sequence[JSON], cluster_domain: str = "cluster.local"
) -> wire.ServiceSpec | None:
    """The forklane service for a Kubernetes Service (None: nothing a proxy can route)."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    if spec.get("type") == "ExternalName" or not name or not namespace:
        return None
    ports = [p for p in spec.get("ports") or () if (p.get("protocol") or "TCP") == "TCP"]
    if not ports:
        return None
    names = [f"{name}.{namespace}", f"{name}.{namespace}.svc",
             f"{name}.{namespace}.svc.{cluster_domain}"]
    numbers = [int(p["port"]) for p in ports]
    ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]
           if ip and ip != "None"]
    authorities = [*names[1:], *(f"{n}:{p}" for n in names for p in numbers),
                   *(_address(ip, p) for ip in ips for p in numbers)]
    per_port = []
    all_draining: set[str] = set()
    for port in ports:
        ready, draining = _endpoints(port, slices)
        all_draining.update(draining)
        per_port.append(wire.ServicePortSpec(port=int(port["port"]), name=port.get("name") or "",
                                             endpoints=ready or draining))
    return wire.ServiceSpec(
        authorities=authorities,
        endpoints=per_port[0].endpoints,
        namespace=namespace,
        namespace_authorities=[name, *(f"{name}:{p}" for p in numbers)],
        ports=per_port if len(per_port) > 1 else [],
        discovered=wire.DiscoveredFrom(namespace=namespace, name=name, cluster_ips=ips,
                                       draining=sorted(all_draining)),
    )
