"""`forklane connect`'s tunnel: the frame format (`frames`, pure), the stream multiplexer
both ends share (`mux`, no WebSocket library) and the control plane's endpoint
(`endpoint`). This package imports nothing itself, so the SDK can use `frames` and `mux`."""
