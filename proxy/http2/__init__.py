"""HTTP/2 (h2c and TLS+ALPN) and gRPC through the proxy, on its own lean frame path.

Design decisions:
- Downstream HTTP/2 arrives two ways on the same listener ports: h2c with prior knowledge
  (the HTTP/1.1 listener sees the connection preface `PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n` as
  the first bytes and hands the transport over), and TLS with ALPN `h2` / `http/1.1` when a
  certificate is configured. There is no `Upgrade: h2c` (gRPC clients never use it).
- Upstream protocol follows the downstream one (Envoy's USE_DOWNSTREAM_PROTOCOL): an HTTP/2
  request goes to its upstream over h2c, multiplexed on a pooled connection per endpoint that
  honours the upstream's MAX_CONCURRENT_STREAMS (another connection opens beyond it).
- Routing is the HTTP/1.1 routing: the same `RequestView` (listener kind, method, `:path`
  without query, lowercased `:authority`, only the table's interesting headers) goes to the
  same `decide()`; forks, splits, fallback, key injection and `x-forklane-routed` behave as on
  HTTP/1.1. Hop-by-hop fields are dropped; `te: trailers` is kept. 1xx responses (103 Early
  Hints…) are forwarded before the final head.
- gRPC (`content-type: application/grpc*`): every error the proxy generates is a
  trailers-only response (`:status 200`, `grpc-status`, `grpc-message`), never an HTTP error
  page: UNAVAILABLE for no route / connect failures / upstream resets, DEADLINE_EXCEEDED when
  `grpc-timeout` expires. gRPC calls have no route timeout (streams may last for hours); only
  their own deadline applies. Plain HTTP/2 requests keep the route timeout for the response head.

Invariants:
- the frame path (`frames`, `hpack`, `conn`) is pure and compiled with the hot path: it does
  what a relay needs (decode a head, route, encode it for the other side, relay DATA,
  trailers, RST_STREAM, WINDOW_UPDATE, PING, SETTINGS, GOAWAY) and no more;
- limits: 100 concurrent streams advertised (REFUSED_STREAM beyond), header list size and
  count as on HTTP/1.1 (a stream over them is answered 431 / RESOURCE_EXHAUSTED), 64 KiB
  initial stream window and 1 MiB connection window for clients; 256 KiB per stream and
  16 MiB per connection for upstreams (a response's speed is window / round trip);
- flow control both ways with bounded buffers: a DATA frame is acknowledged to its sender only
  once it was handed to the other side within that side's window, and nothing is handed to a
  side whose socket buffer is full, so a stream buffers at most one window per direction;
- Rapid Reset (CVE-2023-44487): streams the client resets before their response completed
  are counted per connection; past a threshold the connection ends with GOAWAY
  ENHANCE_YOUR_CALM;
- GOAWAY from either side lets the streams in flight finish; an upstream GOAWAY only stops new
  streams from going to that connection.
"""
