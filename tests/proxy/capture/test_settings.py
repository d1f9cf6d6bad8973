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
