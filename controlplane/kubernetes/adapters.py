"""The Kubernetes side of one control-plane replica, started and stopped as one: the API
client, discovery, the TokenReview checker (and the injection webhook when configured).

Imported by the control plane only when `settings.kubernetes` is true, so a control plane
outside a cluster never loads kubernetes_asyncio.
"""

from __future__ import annotations

import logging

from forklane.controlplane.kubernetes.client import KubeClient, connect
from forklane.controlplane.kubernetes.discovery import Discovery
from forklane.controlplane.kubernetes.tokens import TokenReviewer
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.base import Store

__all__ = ["KubeAdapters"]

log = logging.getLogger("forklane.controlplane.kubernetes")


class KubeAdapters:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.client: KubeClient | None = None
        self.discovery: Discovery | None = None
        self.reviewer: TokenReviewer | None = None

    async def start(self) -> None:
        s = self.settings
        self.client = await connect(s.kubeconfig)
        self.reviewer = TokenReviewer(self.client, s.token_audience)
        self.discovery = Discovery(self.client, self.store, cluster_domain=s.cluster_domain,
                                   namespaces=s.discovery_namespace_list())
        await self.discovery.start()
        log.info("kubernetes: discovery and ServiceAccount token checks on")

    async def aclose(self) -> None:
        if self.discovery is not None:
            await self.discovery.aclose()
            self.discovery = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
