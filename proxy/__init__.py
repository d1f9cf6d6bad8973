"""forklane proxy: the data plane sidecar (listeners, routing, context, upstreams, admin)."""
