"""Snapshot push over gRPC: the control-plane end of the proxy subscription stream.

One bidirectional-streaming method, `/forklane.push.v1.SnapshotService/Stream`, registered with
a generic handler: no generated code, the messages are the pydantic models of
`proxy.push_messages` carried as JSON (the proxy owns them because dependencies point
controlplane → proxy only). The exchange is xDS-shaped:

1. the proxy opens the stream with `authorization: Bearer <token>` metadata and sends
   `SubscribeRequest{node, version_info}` (its last applied version, "" at first);
2. the server checks the token (`authorize(token)`; false → UNAUTHENTICATED with a reason),
   registers the stream in the `ProxyRegistry`, sends initial metadata naming its replica,
   and pushes `SnapshotResponse{version_info, nonce, kind="full", snapshot}` with the latest
   snapshot;
3. the proxy applies it and ACKs (`version_info` = the pushed version, `response_nonce` =
   nonce) or NACKs (`version_info` = the version it still runs, `error_detail` = why). A
   NACKed version is never applied; the server does not resend it, it waits for a newer one.

Invariants:
- at most one unanswered push per stream: the next push waits for the answer to the last,
  and is then the *latest* snapshot, so a slow proxy skips intermediate versions instead of
  queueing them;
- an answer is matched to its push by nonce; an answer with any other nonce is stale and
  ignored;
- each version is encoded to JSON once, however many streams push it;
- the registry holds exactly the open streams: an entry is added once a stream is
  authorised and identified, and removed when it ends for any reason.
- `kind="delta"` is reserved: a node that lists "delta" in its capabilities may later get
  deltas; today every push is a full snapshot.
"""

from forklane.controlplane.push.registry import ProxyRegistry
from forklane.controlplane.push.server import PushServer

__all__ = ["ProxyRegistry", "PushServer"]
