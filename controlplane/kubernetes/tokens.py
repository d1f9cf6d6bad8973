"""Projected ServiceAccount tokens, checked with TokenReview (`authentication.k8s.io/v1`).

A proxy in a cluster presents the token kubelet projects into its pod (audience `forklane`);
the control plane asks the API server who it is. Accepted only when `status.authenticated`
is true, the requested audience is among `status.audiences`, and the user is a
ServiceAccount (`system:serviceaccount:NAMESPACE:NAME`); the namespace then bounds the
service the proxy may subscribe as. Answers are cached for `ttl` seconds (bounded), as the
API server's own webhook token authenticator does, so reconnect storms cost one review per
token.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from forklane.controlplane.kubernetes.client import TOKEN_REVIEWS, KubeClient

__all__ = ["ServiceAccount", "TokenReviewer", "service_account_of"]

_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    namespace: str
    name: str

    @property
    def username(self) -> str:
        return f"{_PREFIX}{self.namespace}:{self.name}"


def service_account_of(status: Mapping[str, Any], audience: str) -> ServiceAccount | None:
    """The ServiceAccount a TokenReview status vouches for, for `audience`; else None. Pure."""
    if status.get("authenticated") is not True or audience not in (status.get("audiences") or ()):
        return None
    username = str((status.get("user") or {}).get("username", ""))
    if not username.startswith(_PREFIX):
        return None
    namespace, sep, name = username.removeprefix(_PREFIX).partition(":")
    if not sep or not namespace or not name or ":" in name:
        return None
    return ServiceAccount(namespace, name)


class TokenReviewer:
    def __init__(self, kube: KubeClient, audience: str = "forklane", *, ttl: float = 60.0,
                 max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._audience = audience
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, ServiceAccount | None]] = OrderedDict()
        self.reviews = 0  # TokenReviews sent (cache misses)

    async def review(self, token: str) -> ServiceAccount | None:
        """Who the token is (None: not a valid token for our audience). Raises
        KubeUnavailable/KubeError when the API server cannot answer: the caller refuses the
        stream as unavailable, not as unauthenticated."""
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(token)
            return cached[1]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self._audience]}}
        answer = await self._kube.create(TOKEN_REVIEWS, body)
        self.reviews += 1
        who = service_account_of(answer.get("status") or {}, self._audience)
        self._cache[token] = (now + self._ttl, who)
        self._cache.move_to_end(token)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return who
