"""An in-process fake Kubernetes API server for tests (no API server can run on these
machines). It is checked against real clients: kubernetes-asyncio and the `kubectl` binary
(tests/support/test_kubeapi.py), so it cannot drift from what they expect."""

from tests.support.kubeapi._objects import ApiStatus, ResourceType
from tests.support.kubeapi._server import FakeKube, TokenIdentity, running

__all__ = ["ApiStatus", "FakeKube", "ResourceType", "TokenIdentity", "running"]
