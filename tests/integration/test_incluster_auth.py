"""In-cluster auth on the push stream: a proxy presents its projected ServiceAccount token
(read from a file, as kubelet projects and rotates it); the control plane checks it with
TokenReview (audience `forklane`) and lets it subscribe only as a service of its own
namespace. Static tokens keep working beside it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forklane.controlplane.server import ControlPlane
from forklane.controlplane.settings import Settings
from forklane.proxy.state import TableHolder
from forklane.proxy.subscriber import Subscriber
from tests.support.kubeapi import FakeKube, TokenIdentity
from tests.support.polling import eventually

ADMIN = "incluster-admin-token-0123456789"


@pytest.fixture
async def cluster() -> AsyncIterator[FakeKube]:
    async with FakeKube() as kube:
        kube.tokens["tok-shop-1"] = TokenIdentity("system:serviceaccount:shop:pricing",
                                                  ("forklane",))
        kube.tokens["tok-shop-2"] = TokenIdentity("system:serviceaccount:shop:pricing",
                                                  ("forklane",))
        kube.tokens["tok-api"] = TokenIdentity("system:serviceaccount:shop:pricing",
                                               ("https://kubernetes.default.svc",))
        kube.tokens["tok-user"] = TokenIdentity("alice@example.com", ("forklane",))
        yield kube


@pytest.fixture
async def plane(cluster: FakeKube, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    cp = ControlPlane(Settings(
        listen="127.0.0.1:0", grpc="127.0.0.1:0", data_dir=tmp_path, admin_token=ADMIN,
        replica="t", kubernetes=True, kubeconfig=cluster.kubeconfig(tmp_path / "kc")))
    await cp.start()
    try:
        yield cp
    finally:
        await cp.aclose()


@contextlib.asynccontextmanager
async def subscribed(plane: ControlPlane, service: str, *, token_file: Path | None = None,
                     token: str | None = None) -> AsyncIterator[Subscriber]:
    assert plane.grpc_address is not None
    sub = Subscriber(f"127.0.0.1:{plane.grpc_address[1]}", TableHolder(), node_id="n1",
                     service=service, token=token, token_file=token_file,
                     backoff_base=0.02, backoff_cap=0.1)
    task = asyncio.create_task(sub.run())
    try:
        yield sub
    finally:
        await sub.aclose()
        await task


async def test_service_account_token_from_a_rotated_file(cluster: FakeKube,
                                                        plane: ControlPlane,
                                                        tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-shop-1\n")
    async with subscribed(plane, "pricing.shop", token_file=token_file) as sub:
        await eventually(lambda: sub.connected, 10, "subscribed with the SA token")
        assert cluster.token_reviews[-1] == {"token": "tok-shop-1", "audiences": ["forklane"]}
        # kubelet rotates the token; the next stream presents the new one
        token_file.write_text("tok-shop-2")
        await plane.push.aclose()
        await plane.push.start(f"127.0.0.1:{plane.grpc_address[1]}")  # type: ignore[index]
        await eventually(lambda: sub.connected and any(
            r["token"] == "tok-shop-2" for r in cluster.token_reviews), 10, "re-subscribed")
    assert {p.node_id for p in plane.registry.list()} <= {"n1"}


@pytest.mark.parametrize(("token", "service", "why"), [
    ("tok-shop-1", "pricing.bank", "may subscribe only as a service of namespace 'shop'"),
    ("tok-shop-1", "pricing", "may subscribe only as a service of namespace 'shop'"),
    ("tok-api", "pricing.shop", "UNAUTHENTICATED"),  # audience is the API server's, not ours
    ("tok-user", "pricing.shop", "UNAUTHENTICATED"),  # not a ServiceAccount
    ("forged", "pricing.shop", "UNAUTHENTICATED"),
])
async def test_refused(plane: ControlPlane, tmp_path: Path, token: str, service: str,
                       why: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    async with subscribed(plane, service, token_file=token_file) as sub:
        await eventually(lambda: why in sub.last_error, 10, f"refused: {why}")
        assert not sub.connected


async def test_static_token_and_unreadable_file(plane: ControlPlane, tmp_path: Path) -> None:
    async with subscribed(plane, "anything.anywhere", token=ADMIN) as sub:
        await eventually(lambda: sub.connected, 10, "static admin token still works")
    async with subscribed(plane, "pricing.shop", token_file=tmp_path / "missing") as sub:
        await eventually(lambda: "cannot read token file" in sub.last_error, 10, "file error")


async def test_reviews_are_cached(cluster: FakeKube, plane: ControlPlane,
                                  tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-shop-1")
    for _ in range(3):
        async with subscribed(plane, "pricing.shop", token_file=token_file) as sub:
            await eventually(lambda: sub.connected, 10, "subscribed")
    assert [r["token"] for r in cluster.token_reviews] == ["tok-shop-1"]
