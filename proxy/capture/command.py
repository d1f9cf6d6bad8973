"""`forklane proxy capture`: install, replace, print or remove the capture rules.

Exit codes: 0 done, 1 the rules could not be applied (no iptables, no permission, a kernel
without nat), 2 a bad flag value. IPv6 rules are applied when the namespace has a global IPv6
address (a dual-stack pod; the sidecar then listens on `::` too) and ip6tables works there;
otherwise IPv6 is left alone with a note, not an error. `--uninstall` removes both families.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from forklane.proxy.capture.iptables import (
    BackendChoice,
    CaptureError,
    Runner,
    choose_backend,
    default_runner,
)
from forklane.proxy.capture.rules import (
    CaptureOptions,
    Family,
    OptionError,
    build_rules,
    install_script,
    parse_cidr_set,
    parse_cidrs,
    parse_port_set,
    parse_ports,
    render_commands,
    uninstall_script,
)
from forklane.proxy.sockets import global_ipv6_present

__all__ = ["add_arguments", "options_from", "run"]

_PROG = "forklane proxy capture"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags, with Istio's `istio-iptables` names and meanings."""
    p.add_argument("--proxy-uid", default="1337",
                   help="UID the sidecar runs as: its own traffic is never captured (1337)")
    p.add_argument("--outbound-port", default="15001",
                   help="where captured outbound TCP goes (15001)")
    p.add_argument("--inbound-port", default="15006",
                   help="where captured inbound TCP goes (15006)")
    p.add_argument("--admin-port", default="15000",
                   help="the sidecar's admin port, never captured inbound (15000; 'off')")
    p.add_argument("--inbound-ports", default="*",
                   help="inbound ports to capture: '*' for all, or P1,P2 ('' for none)")
    p.add_argument("--exclude-inbound-ports", default="", help="P1,P2 never captured inbound")
    p.add_argument("--exclude-outbound-ports", default="", help="P1,P2 never captured outbound")
    p.add_argument("--exclude-outbound-cidrs", default="", help="C1,C2 never captured outbound")
    p.add_argument("--include-outbound-cidrs", default="*",
                   help="outbound destinations to capture: '*' for all, or C1,C2")
    p.add_argument("--iptables-backend", choices=["auto", "nft", "legacy"], default="auto",
                   help="iptables flavour; auto detects the one the kernel uses, as Istio does")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the rules, change nothing")
    mode.add_argument("--uninstall", action="store_true", help="remove forklane's rules")


def options_from(args: argparse.Namespace) -> CaptureOptions:
    """Flag strings → options; a bad value raises `OptionError` naming the flag."""
    uid_text = str(args.proxy_uid).strip()
    if not uid_text.isdigit():
        raise OptionError(f"--proxy-uid: {uid_text!r} is not a numeric UID")
    outbound = _one_port(args.outbound_port, "--outbound-port")
    inbound = _one_port(args.inbound_port, "--inbound-port")
    admin: int | None = None
    if str(args.admin_port).strip() not in ("off", "none", "-"):
        admin = _one_port(args.admin_port, "--admin-port")
    return CaptureOptions(
        proxy_uid=int(uid_text),
        outbound_port=outbound,
        inbound_port=inbound,
        admin_port=admin,
        inbound_ports=parse_port_set(args.inbound_ports, "--inbound-ports"),
        exclude_inbound_ports=parse_ports(args.exclude_inbound_ports, "--exclude-inbound-ports"),
        exclude_outbound_ports=parse_ports(args.exclude_outbound_ports,
                                           "--exclude-outbound-ports"),
        exclude_outbound_cidrs=parse_cidrs(args.exclude_outbound_cidrs,
                                           "--exclude-outbound-cidrs"),
        include_outbound_cidrs=parse_cidr_set(args.include_outbound_cidrs,
                                              "--include-outbound-cidrs"),
    )


def _one_port(text: str, flag: str) -> int:
    ports = parse_ports(text, flag)
    if len(ports) != 1:
        raise OptionError(f"{flag}: {text!r}: expected one port number")
    return ports[0]


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        runner: Runner = default_runner,
        ipv6_present: Callable[[], bool] = global_ipv6_present) -> int:
    try:
        opts = options_from(args)
    except OptionError as exc:
        print(f"{_PROG}: {exc}", file=err)
        return 2
    if args.dry_run:
        for family in (4, 6):
            out.write("\n".join(render_commands(build_rules(opts, family), family)) + "\n")
        return 0
    families: tuple[Family, ...] = (4, 6)
    if not args.uninstall and not ipv6_present():
        families = (4,)
        print(f"{_PROG}: IPv6 left alone: no global IPv6 address in this network namespace",
              file=err)
    choice: BackendChoice = args.iptables_backend
    try:
        for family in families:
            try:
                backend, saved = choose_backend(family, choice, runner)
            except CaptureError as exc:
                if family == 6 and not str(exc).startswith("permission denied"):
                    print(f"{_PROG}: IPv6 left alone: {exc}", file=err)
                    continue
                raise
            if args.uninstall:
                script = uninstall_script(saved)
                if script is not None:
                    backend.restore_noflush(runner, script)
                print(f"{_PROG}: IPv{family}: "
                      f"{'removed forklane rules' if script else 'no forklane rules'} "
                      f"({backend.label})", file=out)
                continue
            rules = build_rules(opts, family)
            backend.restore_noflush(runner, install_script(rules, saved))
            print(f"{_PROG}: IPv{family}: installed {len(rules)} rules ({backend.label})",
                  file=out)
    except CaptureError as exc:
        print(f"{_PROG}: {exc}", file=err)
        return 1
    return 0
