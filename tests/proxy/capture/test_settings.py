"""Settings that capture cannot work with are refused at start, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from forklane.proxy.settings import ProxySettings


def test_settings_refuse_what_capture_cannot_do() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        ProxySettings(capture=True, service="a", local_app="198.18.0.1:8080")
    with pytest.raises(ValidationError, match="port numbers"):
        ProxySettings(capture=True, capture_opaque_ports="5432,x")
    assert ProxySettings(capture=True, capture_opaque_ports="").capture_opaque_ports == ()
    assert ProxySettings(capture=True).listen_hosts(ipv6_present=True) == ["0.0.0.0", "::"]
    assert ProxySettings().listen_hosts(ipv6_present=True) == ["127.0.0.1"]
    assert ProxySettings(bind="0.0.0.0, ::").listen_hosts(False) == ["0.0.0.0", "::"]
    with pytest.raises(ValidationError, match="terminate TLS"):
        ProxySettings(capture=True, tls_cert="c.pem", tls_key="k.pem")


def test_the_outbound_listener_binds_loopback_under_capture() -> None:
    """Redirected connections arrive on 127.0.0.1 / ::1; on the pod's address the outbound
    listener would take requests from any other pod (an open proxy into the mesh)."""
    assert ProxySettings(capture=True).outbound_hosts(ipv6_present=False) == ["127.0.0.1"]
    assert ProxySettings(capture=True).outbound_hosts(ipv6_present=True) == ["127.0.0.1", "::1"]
    # the inbound listener still takes connections on every address
    assert ProxySettings(capture=True).listen_hosts(ipv6_present=False) == ["0.0.0.0"]
    assert ProxySettings(bind="0.0.0.0", outbound_bind="loopback").outbound_hosts(False) == [
        "127.0.0.1"]
    # without capture and without outbound_bind: as bind (explicit mode keeps its behaviour)
    assert ProxySettings(bind="0.0.0.0").outbound_hosts(False) == ["0.0.0.0"]
    assert ProxySettings(capture=True, outbound_bind="0.0.0.0").outbound_hosts(False) == [
        "0.0.0.0"]
    with pytest.raises(ValidationError, match="outbound_bind"):
        ProxySettings(outbound_bind=" , ")
