"""The one place that talks to the Kubernetes API (kubernetes-asyncio), in raw JSON.

Objects stay plain dicts (the pure modules read them; no generated models are built per
event). kubernetes-asyncio's exceptions are translated here, once:
- `KubeError(status, reason, message)` for an answer with a `Status` body (404, 409, 410 …);
- `KubeUnavailable` when the API cannot be reached (worth a retry after a backoff).

`watch()` yields the events of one watch request as they arrive (ADDED, MODIFIED, DELETED,
BOOKMARK); an ERROR event is raised as `KubeError` (410 `Expired` after compaction), and the
stream's normal end simply ends the iteration: the caller decides to resume or relist.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["Kind", "KubeClient", "KubeError", "KubeUnavailable", "connect"]

JSON = dict[str, Any]


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class KubeUnavailable(ConnectionError):
    """The API server cannot be reached now."""


@dataclass(frozen=True, slots=True)
class Kind:
    """Where a resource type lives: `/api/v1` or `/apis/GROUP/VERSION`, and its plural."""

    api: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str = "") -> str:
        base = self.api
        if namespace and self.namespaced:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


NAMESPACES = Kind("/api/v1", "namespaces", namespaced=False)
SERVICES = Kind("/api/v1", "services")
SECRETS = Kind("/api/v1", "secrets")
ENDPOINT_SLICES = Kind("/apis/discovery.k8s.io/v1", "endpointslices")
PODS = Kind("/api/v1", "pods")
DEPLOYMENTS = Kind("/apis/apps/v1", "deployments")
LEASES = Kind("/apis/coordination.k8s.io/v1", "leases")
TOKEN_REVIEWS = Kind("/apis/authentication.k8s.io/v1", "tokenreviews", namespaced=False)
MUTATING_WEBHOOKS = Kind("/apis/admissionregistration.k8s.io/v1",
                         "mutatingwebhookconfigurations", namespaced=False)


def _error(exc: ApiException) -> KubeError:
    reason, message = str(exc.reason or ""), ""
    try:
        body = json.loads(exc.body or "{}")
        reason, message = body.get("reason", reason), body.get("message", "")
    except ValueError:
        message = str(exc.body or "")[:200]
    return KubeError(int(exc.status or 0), reason, message)


class KubeClient:
    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    async def aclose(self) -> None:
        await self._api.close()

    async def _request(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                       body: Any = None, content_type: str = "application/json",
                       request_timeout: float | None = 30.0) -> Any:
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        try:
            resp = await self._api.call_api(
                path, method, query_params=params, body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=request_timeout,
            )
        except ApiException as exc:
            raise _error(exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeUnavailable(f"{method} {path}: {exc}") from exc
        if isinstance(resp, tuple):
            resp = resp[0]
        if not 200 <= resp.status < 300:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise KubeUnavailable(f"{method} {path}: {exc}") from exc
            finally:
                resp.release()
            try:
                status = json.loads(raw)
            except ValueError:
                status = {}
            raise KubeError(resp.status, str(status.get("reason", resp.reason)),
                            str(status.get("message", raw[:200])))
        return resp

    async def call(self, method: str, path: str, query: Mapping[str, Any] | None = None,
                   body: Any = None, content_type: str = "application/json") -> JSON:
        resp = await self._request(method, path, query, body, content_type)
        try:
            data: JSON = json.loads(await resp.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise KubeUnavailable(f"{method} {path}: {exc}") from exc
        finally:
            resp.release()
        return data

    async def list(self, kind: Kind, namespace: str | None = None, **query: Any) -> JSON:
        return await self.call("GET", kind.path(namespace), query)

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> JSON:
        return await self.call("GET", kind.path(namespace, name))

    async def create(self, kind: Kind, body: JSON, namespace: str | None = None) -> JSON:
        return await self.call("POST", kind.path(namespace), body=body)

    async def replace(self, kind: Kind, body: JSON, namespace: str | None = None) -> JSON:
        return await self.call("PUT", kind.path(namespace, body["metadata"]["name"]), body=body)

    async def delete(self, kind: Kind, name: str, namespace: str | None = None,
                     *, propagation: str = "Background",
                     resource_version: str | None = None) -> JSON:
        """Delete `name`; dependents go as `propagation` says (Background, Foreground)."""
        body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions",
                      "propagationPolicy": propagation}
        if resource_version is not None:
            body["preconditions"] = {"resourceVersion": resource_version}
        return await self.call("DELETE", kind.path(namespace, name), body=body)

    async def watch(self, kind: Kind, resource_version: str,
                    timeout_seconds: int = 300,
                    label_selector: str | None = None) -> AsyncIterator[JSON]:
        query = {"watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds),
                 "labelSelector": label_selector}
        resp = await self._request("GET", kind.path(), query,
                                   request_timeout=timeout_seconds + 30)
        try:
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise KubeUnavailable(f"watch {kind.plural}: {exc}") from exc
                if not line:
                    return
                try:
                    event: JSON = json.loads(line)
                except ValueError as exc:
                    raise KubeUnavailable(f"watch {kind.plural}: unreadable event") from exc
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise KubeError(int(status.get("code", 500)), status.get("reason", ""),
                                    status.get("message", ""))
                yield event
        finally:
            resp.release()
            resp.close()


async def connect(kubeconfig: Path | None) -> KubeClient:
    """In-cluster configuration (the pod's ServiceAccount), or a kubeconfig file."""
    conf = client.Configuration()
    try:
        if kubeconfig is not None:
            await config.load_kube_config(config_file=str(kubeconfig),
                                          client_configuration=conf)
        else:
            config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, ValueError) as exc:
        raise KubeUnavailable(f"no Kubernetes configuration: {exc}") from exc
    return KubeClient(client.ApiClient(conf))
