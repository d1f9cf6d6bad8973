"""The capture rules as values: options in, the exact rule lines out.

The golden lists are what an operator reads in `iptables-save`; they follow Istio's
`istio-iptables` REDIRECT rules with forklane's chain names. Re-running and uninstalling
are planned from a saved nat table, so those are values too.
"""

from __future__ import annotations

import ipaddress

import pytest

from forklane.proxy.capture.rules import (
    CaptureOptions,
    OptionError,
    build_rules,
    existing_chains,
    existing_jumps,
    install_script,
    parse_cidr_set,
    parse_cidrs,
    parse_port_set,
    parse_ports,
    render_commands,
    uninstall_script,
)


def lines(opts: CaptureOptions, family: int = 4) -> list[str]:
    return [" ".join(rule) for rule in build_rules(opts, family)]  # type: ignore[arg-type]


def test_defaults_capture_everything_but_loopback_and_the_sidecar() -> None:
    assert lines(CaptureOptions()) == [
        "-A FORKLANE_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A FORKLANE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        # the sidecar's own ports are never captured inbound
        "-A FORKLANE_INBOUND -p tcp --dport 15000 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp --dport 15001 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp --dport 15006 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp -j FORKLANE_IN_REDIRECT",
        # the sidecar dialling its own pod address: inbound, as Istio does
        "-A FORKLANE_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m owner --uid-owner 1337 "
        "-j FORKLANE_IN_REDIRECT",
        # everybody else's loopback traffic: left alone
        "-A FORKLANE_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        # the sidecar's own connections: never captured again
        "-A FORKLANE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A FORKLANE_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A FORKLANE_OUTPUT -j FORKLANE_REDIRECT",
        "-A PREROUTING -p tcp -j FORKLANE_INBOUND",
        "-A OUTPUT -p tcp -j FORKLANE_OUTPUT",
    ]


def test_ipv6_uses_its_own_loopback() -> None:
    v6 = lines(CaptureOptions(proxy_uid=1000), 6)
    assert "-A FORKLANE_OUTPUT -d ::1/128 -j RETURN" in v6
    assert ("-A FORKLANE_OUTPUT -o lo ! -d ::1/128 -p tcp -m owner --uid-owner 1000 "
            "-j FORKLANE_IN_REDIRECT") in v6
    assert not [line for line in v6 if "127.0.0.1" in line]


def test_listed_inbound_ports_skip_excluded_and_own_ports() -> None:
    opts = CaptureOptions(inbound_ports=(8080, 9090, 15000, 15006), exclude_inbound_ports=(9090,))
    inbound = [line for line in lines(opts) if "FORKLANE_INBOUND" in line.split()[1]]
    assert inbound == ["-A FORKLANE_INBOUND -p tcp --dport 8080 -j FORKLANE_IN_REDIRECT"]
    assert "-A PREROUTING -p tcp -j FORKLANE_INBOUND" in lines(opts)


def test_no_inbound_ports_means_no_inbound_jump() -> None:
    for ports in ((), (15001,)):
        assert not [line for line in lines(CaptureOptions(inbound_ports=ports))
                    if line.startswith("-A PREROUTING")]


def test_wildcard_inbound_with_exclusions_returns_them_first() -> None:
    opts = CaptureOptions(exclude_inbound_ports=(22, 8443), admin_port=None)
    inbound = [line for line in lines(opts) if line.startswith("-A FORKLANE_INBOUND")]
    assert inbound == [
        "-A FORKLANE_INBOUND -p tcp --dport 22 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp --dport 8443 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp --dport 15001 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp --dport 15006 -j RETURN",
        "-A FORKLANE_INBOUND -p tcp -j FORKLANE_IN_REDIRECT",
    ]


def test_outbound_port_and_cidr_exclusions_come_before_the_redirect() -> None:
    opts = CaptureOptions(
        exclude_outbound_ports=(5432,),
        exclude_outbound_cidrs=parse_cidrs("10.96.0.0/12,fd00::/8", "x"),
    )
    out = [line for line in lines(opts) if line.startswith("-A FORKLANE_OUTPUT")]
    assert out[0] == "-A FORKLANE_OUTPUT -p tcp --dport 5432 -j RETURN"
    assert out[-2:] == ["-A FORKLANE_OUTPUT -d 10.96.0.0/12 -j RETURN",
                        "-A FORKLANE_OUTPUT -j FORKLANE_REDIRECT"]
    v6 = [line for line in lines(opts, 6) if line.startswith("-A FORKLANE_OUTPUT")]
    assert v6[-2:] == ["-A FORKLANE_OUTPUT -d fd00::/8 -j RETURN",
                       "-A FORKLANE_OUTPUT -j FORKLANE_REDIRECT"]


def test_include_cidrs_capture_only_those_per_family() -> None:
    opts = CaptureOptions(include_outbound_cidrs=parse_cidrs("10.0.0.0/8,192.168.0.0/16", "x"))
    out = [line for line in lines(opts) if "FORKLANE_REDIRECT" in line and "OUTPUT" in line]
    assert out == ["-A FORKLANE_OUTPUT -d 10.0.0.0/8 -j FORKLANE_REDIRECT",
                   "-A FORKLANE_OUTPUT -d 192.168.0.0/16 -j FORKLANE_REDIRECT"]
    # no IPv6 range listed: IPv6 outbound is not captured at all
    assert not [line for line in lines(opts, 6) if line.endswith("-j FORKLANE_REDIRECT")
                and "FORKLANE_OUTPUT" in line]


@pytest.mark.parametrize("text, expected", [
    ("", ()), ("8080", (8080,)), ("80, 443,80", (80, 443)), (" 1,65535 ", (1, 65535)),
])
def test_parse_ports(text: str, expected: tuple[int, ...]) -> None:
    assert parse_ports(text, "--p") == expected


@pytest.mark.parametrize("text", ["0", "65536", "http", "80;443", "-1", "8o"])
def test_bad_ports_name_the_flag(text: str) -> None:
    with pytest.raises(OptionError, match="--exclude-inbound-ports"):
        parse_ports(text, "--exclude-inbound-ports")


def test_wildcards() -> None:
    assert parse_port_set("*", "--inbound-ports") is None
    assert parse_port_set("", "--inbound-ports") == ()
    assert parse_cidr_set(" * ", "--include-outbound-cidrs") is None
    assert parse_cidrs("10.0.0.1", "x") == (ipaddress.ip_network("10.0.0.1/32"),)


@pytest.mark.parametrize("text", ["10.0.0.1/33", "10.0.0.1/8", "nonsense", "fd00::1/7"])
def test_bad_cidrs_name_the_flag(text: str) -> None:
    with pytest.raises(OptionError, match="--exclude-outbound-cidrs"):
        parse_cidrs(text, "--exclude-outbound-cidrs")


SAVED = """# Generated by iptables-nft-save v1.8.9 (nf_tables)
*mangle
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j FORKLANE_LOOKALIKE_IN_ANOTHER_TABLE
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FORKLANE_INBOUND - [0:0]
:FORKLANE_OUTPUT - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -p tcp -j FORKLANE_INBOUND
-A PREROUTING -j KUBE-SERVICES
-A OUTPUT -p tcp -j FORKLANE_OUTPUT
-A OUTPUT -p tcp -j FORKLANE_OUTPUT
-A OUTPUT -d 10.0.0.0/8 -j KUBE-SERVICES
-A FORKLANE_OUTPUT -j FORKLANE_REDIRECT
COMMIT
"""


def test_existing_state_is_read_from_the_nat_table_only() -> None:
    assert existing_chains(SAVED) == ("FORKLANE_INBOUND", "FORKLANE_OUTPUT")
    assert existing_jumps(SAVED) == (
        "-A PREROUTING -p tcp -j FORKLANE_INBOUND",
        "-A OUTPUT -p tcp -j FORKLANE_OUTPUT",
        "-A OUTPUT -p tcp -j FORKLANE_OUTPUT",
    )


def test_reinstall_removes_old_jumps_and_touches_nothing_else() -> None:
    script = install_script(build_rules(CaptureOptions(), 4), SAVED).splitlines()
    assert script[:5] == ["*nat", ":FORKLANE_INBOUND - [0:0]", ":FORKLANE_IN_REDIRECT - [0:0]",
                          ":FORKLANE_OUTPUT - [0:0]", ":FORKLANE_REDIRECT - [0:0]"]
    deletes = [line for line in script if line.startswith("-D")]
    assert deletes == ["-D PREROUTING -p tcp -j FORKLANE_INBOUND",
                       "-D OUTPUT -p tcp -j FORKLANE_OUTPUT",
                       "-D OUTPUT -p tcp -j FORKLANE_OUTPUT"]
    assert not [line for line in script if "KUBE-" in line]
    assert script[-2:] == ["-A OUTPUT -p tcp -j FORKLANE_OUTPUT", "COMMIT"]
    # the deletions come before the new jumps: the result has exactly one of each
    assert script.index(deletes[-1]) < script.index("-A PREROUTING -p tcp -j FORKLANE_INBOUND")


def test_uninstall_removes_jumps_then_chains() -> None:
    script = uninstall_script(SAVED)
    assert script is not None
    assert script.splitlines() == [
        "*nat",
        "-D PREROUTING -p tcp -j FORKLANE_INBOUND",
        "-D OUTPUT -p tcp -j FORKLANE_OUTPUT",
        "-D OUTPUT -p tcp -j FORKLANE_OUTPUT",
        "-F FORKLANE_INBOUND",
        "-F FORKLANE_OUTPUT",
        "-X FORKLANE_INBOUND",
        "-X FORKLANE_OUTPUT",
        "COMMIT",
    ]
    assert uninstall_script("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") is None


def test_dry_run_commands() -> None:
    cmds = render_commands(build_rules(CaptureOptions(), 6), 6)
    assert cmds[0] == "ip6tables -t nat -N FORKLANE_INBOUND"
    assert cmds[-1] == "ip6tables -t nat -A OUTPUT -p tcp -j FORKLANE_OUTPUT"
