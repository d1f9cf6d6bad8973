"""forklane SDK: REST clients, propagation helpers for services, and the `forklane` CLI."""
