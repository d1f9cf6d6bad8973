"""The Kubernetes side of one control-plane replica, started and stopped as one: the API
client, discovery, the TokenReview checker, the fork controller with its Lease (and the
injection webhook when configured).

Imported by the control plane only when `settings.kubernetes` is true, so a control plane
outside a cluster never loads kubernetes_asyncio.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from forklane.controlplane.kubernetes.client import KubeClient, connect
from forklane.controlplane.kubernetes.discovery import Discovery
from forklane.controlplane.kubernetes.election import LeaseElector
from forklane.controlplane.kubernetes.forks import ForkController
from forklane.controlplane.kubernetes.injection import SidecarTemplate
from forklane.controlplane.kubernetes.tokens import TokenReviewer
from forklane.controlplane.kubernetes.webhook import WebhookServer
from forklane.controlplane.settings import Settings
from forklane.controlplane.store.base import Store

__all__ = ["KubeAdapters", "sidecar_template"]

log = logging.getLogger("forklane.controlplane.kubernetes")


def sidecar_template(settings: Settings) -> SidecarTemplate:
    return SidecarTemplate(
        image=settings.sidecar_image,
        image_pull_policy=settings.sidecar_image_pull_policy,
        controlplane=settings.sidecar_controlplane_address(),
        controlplane_namespace=settings.namespace,
        audience=settings.token_audience,
        cpu_request=settings.sidecar_cpu_request,
        memory_request=settings.sidecar_memory_request,
        cpu_limit=settings.sidecar_cpu_limit,
        memory_limit=settings.sidecar_memory_limit,
        drain_seconds=settings.sidecar_drain_seconds,
        capture=settings.sidecar_capture,
    )


class KubeAdapters:
    def __init__(self, settings: Settings, store: Store,
                 routed: Callable[[], frozenset[str]] = frozenset) -> None:
        self.settings = settings
        self.store = store
        self.routed = routed
        self.client: KubeClient | None = None
        self.discovery: Discovery | None = None
        self.elector: LeaseElector | None = None
        self.forks: ForkController | None = None
        self.reviewer: TokenReviewer | None = None
        self.webhook: WebhookServer | None = None

    async def start(self) -> None:
        s = self.settings
        self.client = await connect(s.kubeconfig)
        self.reviewer = TokenReviewer(self.client, s.token_audience)
        self.discovery = Discovery(self.client, self.store, cluster_domain=s.cluster_domain,
                                   namespaces=s.discovery_namespace_list())
        await self.discovery.start()
        if s.forks:
            # a random suffix: two processes given the same replica name never share a term
            self.forks = ForkController(self.client, self.store,
                                        interval=s.fork_resync_interval, routed=self.routed)
            self.elector = LeaseElector(
                self.client, name=s.fork_lease, namespace=s.namespace,
                identity=f"{s.replica}-{uuid.uuid4().hex[:8]}", duration=s.fork_lease_seconds,
                renew_every=max(1.0, s.fork_lease_seconds / 3),
                on_change=lambda leading: self.forks.kick() if self.forks else None,
            )
            self.forks.set_elector(self.elector)
            await self.elector.start()
            await self.forks.start()
        if s.webhook_listen is not None:
            self.webhook = WebhookServer(
                sidecar_template(s), listen=s.webhook_listen, kube=self.client,
                namespace=s.namespace, service=s.webhook_service, secret_name=s.webhook_secret,
                config_name=s.webhook_config, cluster_domain=s.cluster_domain,
                cert_dir=s.webhook_cert_dir, check_interval=s.webhook_check_interval,
            )
            await self.webhook.start()
        log.info("kubernetes: discovery, ServiceAccount token checks%s on",
                 " and fork workloads" if s.forks else "")

    async def aclose(self) -> None:
        if self.forks is not None:
            await self.forks.aclose()
            self.forks = None
        if self.elector is not None:
            await self.elector.aclose()
            self.elector = None
        if self.webhook is not None:
            await self.webhook.aclose()
            self.webhook = None
        if self.discovery is not None:
            await self.discovery.aclose()
            self.discovery = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
