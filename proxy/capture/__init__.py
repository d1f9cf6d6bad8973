"""Traffic capture: `forklane proxy capture` installs the nat rules that send a pod's TCP
traffic through the sidecar, the way Istio's `istio-iptables` init does (REDIRECT mode).

`rules` is pure (options in, rule list out: unit-tested line by line); `iptables` finds the
backend the kernel uses (nft or legacy, as Istio detects it) and applies the rules atomically
with `iptables-restore`; `command` is the command line on top of both.
"""
