"""The nat rules of traffic capture, as a pure function of the options.

The rule set follows Istio's `istio-iptables` in REDIRECT mode, with forklane's chain names,
so an operator who knows one reads the other:

    PREROUTING -p tcp -> FORKLANE_INBOUND      inbound TCP to the app's ports -> inbound port
    OUTPUT     -p tcp -> FORKLANE_OUTPUT       outbound TCP -> outbound port, except:
      excluded destination ports                  (--exclude-outbound-ports)
      -o lo ! -d 127.0.0.1, proxy UID -> FORKLANE_IN_REDIRECT
                                                  the sidecar dialling its own pod's address
                                                  (the app reached through its own Service)
                                                  is handled as inbound, as Istio does
      -o lo, any other UID -> RETURN              the app's loopback traffic is left alone,
                                                  its calls to its own pod address included
      proxy UID -> RETURN                         the sidecar's own connections: never again
      -d 127.0.0.1 -> RETURN
      excluded CIDRs -> RETURN, included CIDRs (or all) -> FORKLANE_REDIRECT

Invariants:
- only chains named `FORKLANE_*` are created, flushed or deleted, and each built-in chain gets
  exactly one jump into them; `install_script` first deletes the jumps an earlier run left, so
  re-running replaces forklane's rules and never duplicates them;
- the sidecar's own ports (outbound, inbound, admin) are never captured inbound;
- nothing here runs a command or reads a file: `iptables.py` does the I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CHAINS",
    "CaptureOptions",
    "Family",
    "OptionError",
    "Rule",
    "build_rules",
    "existing_chains",
    "existing_jumps",
    "install_script",
    "parse_cidr_set",
    "parse_cidrs",
    "parse_port_set",
    "parse_ports",
    "render_commands",
    "uninstall_script",
]

Family = Literal[4, 6]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Rule = tuple[str, ...]  # the arguments after `-t nat`, e.g. ("-A", "FORKLANE_OUTPUT", "-j", "RETURN")

CHAIN_INBOUND = "FORKLANE_INBOUND"
CHAIN_IN_REDIRECT = "FORKLANE_IN_REDIRECT"
CHAIN_OUTPUT = "FORKLANE_OUTPUT"
CHAIN_REDIRECT = "FORKLANE_REDIRECT"
CHAINS = (CHAIN_INBOUND, CHAIN_IN_REDIRECT, CHAIN_OUTPUT, CHAIN_REDIRECT)
_PREFIX = "FORKLANE_"
_LOOPBACK = {4: "127.0.0.1/32", 6: "::1/128"}


class OptionError(ValueError):
    """A flag value that cannot become a rule; the message names the flag."""


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    """What to capture. `None` in a `*_ports`/`*_cidrs` set means every one (`'*'`)."""

    proxy_uid: int = 1337
    outbound_port: int = 15001
    inbound_port: int = 15006
    admin_port: int | None = 15000
    inbound_ports: tuple[int, ...] | None = None
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[Network, ...] = ()
    include_outbound_cidrs: tuple[Network, ...] | None = None

    @property
    def own_ports(self) -> tuple[int, ...]:
        """The sidecar's listening ports: never redirected inbound."""
        ports = [self.outbound_port, self.inbound_port]
        if self.admin_port is not None:
            ports.append(self.admin_port)
        return tuple(ports)


# -- parsing flag values (clear errors, no tracebacks) ------------------------------------------

def _port(text: str, flag: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise OptionError(f"{flag}: {text!r} is not a port number 1..65535")
    return int(text)


def parse_ports(text: str, flag: str) -> tuple[int, ...]:
    """`P1,P2` → ports in order, duplicates dropped; empty text → none."""
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if item:
            port = _port(item, flag)
            if port not in out:
                out.append(port)
    return tuple(out)


def parse_port_set(text: str, flag: str) -> tuple[int, ...] | None:
    """`*` → None (every port), else `parse_ports`."""
    return None if text.strip() == "*" else parse_ports(text, flag)


def parse_cidrs(text: str, flag: str) -> tuple[Network, ...]:
    """`C1,C2` (a bare address is a /32 or /128) → networks; host bits set is an error."""
    out: list[Network] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise OptionError(f"{flag}: {item!r} is not a CIDR ({exc})") from None
        if net not in out:
            out.append(net)
    return tuple(out)


def parse_cidr_set(text: str, flag: str) -> tuple[Network, ...] | None:
    return None if text.strip() == "*" else parse_cidrs(text, flag)


# -- the rules ------------------------------------------------------------------------------------

def build_rules(opts: CaptureOptions, family: Family) -> tuple[Rule, ...]:
    """Every rule for one address family, in order; the built-in chains' jumps come last."""
    uid = str(opts.proxy_uid)
    loopback = _LOOPBACK[family]
    rules: list[Rule] = [
        ("-A", CHAIN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(opts.outbound_port)),
        ("-A", CHAIN_IN_REDIRECT, "-p", "tcp", "-j", "REDIRECT", "--to-ports",
         str(opts.inbound_port)),
    ]
    skip_inbound = set(opts.own_ports) | set(opts.exclude_inbound_ports)
    capture_inbound = opts.inbound_ports is None or bool(
        set(opts.inbound_ports) - skip_inbound
    )
    if opts.inbound_ports is None:
        for port in sorted(skip_inbound):
            rules.append(("-A", CHAIN_INBOUND, "-p", "tcp", "--dport", str(port), "-j", "RETURN"))
        rules.append(("-A", CHAIN_INBOUND, "-p", "tcp", "-j", CHAIN_IN_REDIRECT))
    else:
        for port in opts.inbound_ports:
            if port not in skip_inbound:
                rules.append(("-A", CHAIN_INBOUND, "-p", "tcp", "--dport", str(port),
                              "-j", CHAIN_IN_REDIRECT))

    for port in opts.exclude_outbound_ports:
        rules.append(("-A", CHAIN_OUTPUT, "-p", "tcp", "--dport", str(port), "-j", "RETURN"))
    rules += [
        ("-A", CHAIN_OUTPUT, "-o", "lo", "!", "-d", loopback, "-p", "tcp",
         "-m", "owner", "--uid-owner", uid, "-j", CHAIN_IN_REDIRECT),
        ("-A", CHAIN_OUTPUT, "-o", "lo", "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN"),
        ("-A", CHAIN_OUTPUT, "-m", "owner", "--uid-owner", uid, "-j", "RETURN"),
        ("-A", CHAIN_OUTPUT, "-d", loopback, "-j", "RETURN"),
    ]
    for net in _of_family(opts.exclude_outbound_cidrs, family):
        rules.append(("-A", CHAIN_OUTPUT, "-d", str(net), "-j", "RETURN"))
    if opts.include_outbound_cidrs is None:
        rules.append(("-A", CHAIN_OUTPUT, "-j", CHAIN_REDIRECT))
    else:
        for net in _of_family(opts.include_outbound_cidrs, family):
            rules.append(("-A", CHAIN_OUTPUT, "-d", str(net), "-j", CHAIN_REDIRECT))

    if capture_inbound:
        rules.append(("-A", "PREROUTING", "-p", "tcp", "-j", CHAIN_INBOUND))
    rules.append(("-A", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUTPUT))
    return tuple(rules)


def _of_family(nets: Iterable[Network], family: Family) -> list[Network]:
    return [net for net in nets if net.version == family]


# -- what an earlier run left (parsed from `iptables-save -t nat`) --------------------------------

_JUMP = re.compile(r"^-A (\S+) .*-j (" + _PREFIX + r"\w+)(\s|$)")


def _nat_lines(saved: str) -> list[str]:
    """The lines of the nat table section of `iptables-save` output."""
    out: list[str] = []
    inside = False
    for line in saved.splitlines():
        if line.startswith("*"):
            inside = line.strip() == "*nat"
        elif inside:
            if line.strip() == "COMMIT":
                inside = False
            else:
                out.append(line.rstrip())
    return out


def existing_chains(saved: str) -> tuple[str, ...]:
    """forklane's chains present in the nat table."""
    names = [line[1:].split()[0] for line in _nat_lines(saved) if line.startswith(":")]
    return tuple(name for name in names if name.startswith(_PREFIX))


def existing_jumps(saved: str) -> tuple[str, ...]:
    """The `-A CHAIN ... -j FORKLANE_*` rules of chains that are not ours, as saved."""
    out = []
    for line in _nat_lines(saved):
        match = _JUMP.match(line)
        if match and not match.group(1).startswith(_PREFIX):
            out.append(line)
    return tuple(out)


def install_script(rules: Sequence[Rule], saved: str) -> str:
    """`iptables-restore --noflush` input that replaces forklane's rules atomically.

    Declaring a chain flushes it (or creates it); the jumps an earlier run added to built-in
    chains are deleted before the new ones are appended; nothing else is touched."""
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in CHAINS]
    lines += ["-D" + jump[2:] for jump in existing_jumps(saved)]
    lines += [" ".join(rule) for rule in rules]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def uninstall_script(saved: str) -> str | None:
    """`iptables-restore --noflush` input that removes every trace of forklane, or None when
    there is none."""
    jumps = existing_jumps(saved)
    chains = existing_chains(saved)
    if not jumps and not chains:
        return None
    lines = ["*nat"]
    lines += ["-D" + jump[2:] for jump in jumps]
    lines += [f"-F {chain}" for chain in chains]
    lines += [f"-X {chain}" for chain in chains]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def render_commands(rules: Sequence[Rule], family: Family) -> list[str]:
    """The rules as the equivalent `iptables` command lines (for `--dry-run`)."""
    binary = "iptables" if family == 4 else "ip6tables"
    out = [f"{binary} -t nat -N {chain}" for chain in CHAINS]
    out += [f"{binary} -t nat " + " ".join(rule) for rule in rules]
    return out

