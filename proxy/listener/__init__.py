"""The layer below both HTTP protocol modules: what every connection of a listener shares,
and what a listener does with a connection before (or instead of) speaking HTTP on it.

- `context`: `ListenerContext`, shared by every connection of one listener whatever it
  speaks (HTTP/1.1, HTTP/2, a relay), with the sweep that enforces deadlines;
- `handoff`: which HTTP module takes a connection (ALPN `h2`, the h2c preface);
- with traffic capture on (`capture` setting), every TCP connection of the pod reaches a
  listener. `sniff.Sniffer` is then the listener's protocol: it reads the original
  destination (`origdst`), looks at the first bytes (`detect`, pure), and either hands the
  connection to the HTTP/1.1 module (which hands h2c on to HTTP/2, as without capture) or
  relays it untouched to where the client meant to go (`relay`). `peer` refuses a connection
  the sidecar made itself and the capture rules sent back to it (a loop), whatever the rules
  say.

Nothing here parses HTTP; the protocol modules (`http1`, `http2`) import from here, never the
other way round.
"""
