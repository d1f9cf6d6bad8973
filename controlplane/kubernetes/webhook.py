"""The injection webhook: an HTTPS server (aiohttp) that answers AdmissionReviews, and the
certificate it serves.

Paths: `POST /inject` (pods of namespaces without the label: the pod's annotation decides)
and `POST /inject/namespace-enabled` (namespaces labelled `forklane.io/inject=enabled`);
`GET /healthz`. A body that is not an AdmissionReview gets 400 with the reason.

Certificates, two modes:
- generated (default): the CA and serving certificate live in the Secret `secret_name` of
  the control plane's namespace (the chart creates it empty); `ensure()` reads it, rotates
  what is due (`certs.plan`), writes it back with the resourceVersion it read (a replica
  that loses the race re-reads and uses the winner's), loads the serving pair, and puts the
  trust bundle into the `caBundle` of every webhook of the MutatingWebhookConfiguration
  `config_name` that points at our Service. It runs at start and every `check_interval`;
- files (cert-manager): `tls.crt`/`tls.key` are read from `cert_dir` and reloaded when they
  change; cert-manager's CA injector owns the `caBundle`.
New handshakes use a reloaded certificate at once; open connections keep theirs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from forklane.controlplane.kubernetes.admission import ReviewError, review
from forklane.controlplane.kubernetes.certs import CertBundle, plan, webhook_dns_names
from forklane.controlplane.kubernetes.client import (
    MUTATING_WEBHOOKS,
    SECRETS,
    KubeClient,
    KubeError,
    KubeUnavailable,
)
from forklane.controlplane.kubernetes.injection import SidecarTemplate
from forklane.controlplane.settings import parse_hostport

__all__ = ["WebhookServer"]

log = logging.getLogger("forklane.controlplane.webhook")
MAX_BODY = 8 << 20


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """ssl only loads from files: write the pair to a private temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        crt, k = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        crt.write_text(cert)
        k.touch(0o600)
        k.write_text(key)
        ctx.load_cert_chain(crt, k)


class WebhookServer:
    def __init__(
        self,
        template: SidecarTemplate,
        *,
        listen: str,
        kube: KubeClient | None,
        namespace: str,
        service: str,
        secret_name: str,
        config_name: str,
        cluster_domain: str = "cluster.local",
        cert_dir: Path | None = None,
        check_interval: float = 3600.0,
    ) -> None:
        self.template = template
        self._listen = listen
        self._kube = kube
        self._namespace = namespace
        self._service = service
        self._secret = secret_name
        self._config = config_name
        self._names = webhook_dns_names(service, namespace, cluster_domain)
        self._cert_dir = cert_dir
        self._interval = check_interval
        self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._loaded: tuple[str, str] | None = None
        self.bundle = ""  # the trust bundle last put into the caBundle
        self.address: tuple[str, int] | None = None
        self.reviews = 0

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.ensure()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/inject", self._inject)
        app.router.add_post("/inject/namespace-enabled", self._inject)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = parse_hostport(self._listen)
        await web.TCPSite(self._runner, host, port, ssl_context=self.ssl).start()
        self.address = (host, int(self._runner.addresses[0][1]))
        self._task = asyncio.create_task(self._keep_current(), name="forklane-webhook-certs")
        log.info("injection webhook (https) listening on %s:%d", host, self.address[1])

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _keep_current(self) -> None:
        while True:
            await asyncio.sleep(self._interval if self._cert_dir is None else
                                min(self._interval, 10.0))
            try:
                await self.ensure()
            except (KubeError, KubeUnavailable, OSError, ValueError) as exc:
                log.warning("webhook certificate check failed, retrying: %s", exc)

    # -- certificates -----------------------------------------------------------------------
    async def ensure(self, now: datetime | None = None) -> None:
        """Serve a current certificate, and make the caBundle trust it."""
        if self._cert_dir is not None:
            cert = (self._cert_dir / "tls.crt").read_text()
            key = (self._cert_dir / "tls.key").read_text()
            self._use(cert, key)
            return
        assert self._kube is not None, "generated certificates need the Kubernetes API"
        now = now or datetime.now(UTC)
        for _ in range(5):
            secret = await self._kube.get(SECRETS, self._secret, self._namespace)
            data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
            current = CertBundle.from_data(data)
            wanted = plan(current, self._names, now)
            if wanted != current:
                secret["data"] = {k: base64.b64encode(v.encode()).decode()
                                  for k, v in wanted.as_data().items()}
                try:
                    await self._kube.replace(SECRETS, secret, self._namespace)
                except KubeError as exc:
                    if exc.status == 409:
                        continue  # another replica rotated first: use theirs
                    raise
                log.info("webhook certificate issued (secret %s/%s)", self._namespace,
                         self._secret)
            self._use(wanted.tls_crt, wanted.tls_key)
            await self._patch_ca_bundle(wanted.bundle)
            return
        raise KubeUnavailable("the webhook Secret kept changing under us")

    def _use(self, cert: str, key: str) -> None:
        if self._loaded != (cert, key):
            _load_pair(self.ssl, cert, key)
            self._loaded = (cert, key)

    async def _patch_ca_bundle(self, bundle: str) -> None:
        assert self._kube is not None
        encoded = base64.b64encode(bundle.encode()).decode()
        for _ in range(5):
            config = await self._kube.get(MUTATING_WEBHOOKS, self._config)
            changed = False
            for hook in config.get("webhooks") or ():
                ref = (hook.get("clientConfig") or {}).get("service") or {}
                if (ref.get("name"), ref.get("namespace")) != (self._service, self._namespace):
                    continue
                if hook["clientConfig"].get("caBundle") != encoded:
                    hook["clientConfig"]["caBundle"] = encoded
                    changed = True
            if not changed:
                self.bundle = bundle
                return
            try:
                await self._kube.replace(MUTATING_WEBHOOKS, config)
            except KubeError as exc:
                if exc.status == 409:
                    continue
                raise
            self.bundle = bundle
            log.info("caBundle of mutatingwebhookconfiguration/%s updated", self._config)
            return

    # -- handlers ---------------------------------------------------------------------------
    async def _inject(self, request: web.Request) -> web.Response:
        enabled = request.path.endswith("/namespace-enabled")
        try:
            body: Any = json.loads(await request.read())
            answer = review(body, self.template, namespace_enabled=enabled)
        except (ValueError, ReviewError) as exc:
            return web.json_response({"error": f"not an AdmissionReview: {exc}"}, status=400)
        self.reviews += 1
        return web.json_response(answer)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})
