"""An in-process fake Kubernetes API server for tests (no API server can run on these
machines). It is checked against real clients: kubernetes-asyncio and the `kubectl` binary
(tests/integration/test_fake_kubeapi.py), so it cannot drift from what they expect. Its
controllers turn Deployments into ReplicaSets and Pods; a `Kubelet` runs the Pods."""

from tests.support.kubeapi._controllers import Controllers
from tests.support.kubeapi._kubelet import Kubelet, PodAddress, ScriptedRuntime, Started, Stuck
from tests.support.kubeapi._objects import ApiStatus, ResourceType
from tests.support.kubeapi._server import FakeKube, TokenIdentity, running

__all__ = [
    "ApiStatus",
    "Controllers",
    "FakeKube",
    "Kubelet",
    "PodAddress",
    "ResourceType",
    "ScriptedRuntime",
    "Started",
    "Stuck",
    "TokenIdentity",
    "running",
]
