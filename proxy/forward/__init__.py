"""The protocol-neutral forwarding core, shared by the HTTP/1.1 and HTTP/2 listeners.

- `errors`: every answer the proxy makes itself, as one typed table (HTTP status, gRPC
  status, `x-forklane-error` value, metric label);
- `attempts`: what to do after a failed attempt (retry another endpoint, fall back, fail), a
  pure function;
- `phases`: the named phases of an exchange's life;
- `core`: header classification, the routing decision with its hooks and outcome cache,
  carrier injection and the forwarded fields (X-Forwarded-*, Via, the routed mark), the
  explanation header;
- `accounting`: what every finished request leaves behind (metrics row, latency, access log,
  live tap, span).

The protocol modules turn bytes into heads and back; everything a request's routing and
forwarding means is decided here, once, the same way for both protocols.
"""
