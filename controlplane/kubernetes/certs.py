"""The webhook's certificates: a private CA and the serving certificate it signs. No I/O.

Lifetimes: the CA lives `ca_days` (default 10 years), the serving certificate `cert_days`
(default 1 year). Rotation happens when less than a third of a certificate's lifetime is
left, or when the serving certificate does not cover the webhook's DNS names or was not
signed by the current CA. A rotated CA does not break callers: the trust bundle (the
MutatingWebhookConfiguration's `caBundle`) holds the new CA *and* the previous one while
that one is still valid, so a replica still serving a certificate of the old CA is trusted
until it reloads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertBundle", "plan", "webhook_dns_names"]


@dataclass(frozen=True, slots=True)
class CertBundle:
    """What the Secret holds (PEM text): the CA, its key, the trust bundle, the serving pair."""

    ca_crt: str = ""
    ca_key: str = ""
    bundle: str = ""  # current CA + the previous one while it is valid
    tls_crt: str = ""
    tls_key: str = ""

    def as_data(self) -> dict[str, str]:
        return {"ca.crt": self.ca_crt, "ca.key": self.ca_key, "bundle.crt": self.bundle,
                "tls.crt": self.tls_crt, "tls.key": self.tls_key}

    @classmethod
    def from_data(cls, data: dict[str, str]) -> CertBundle:
        return cls(data.get("ca.crt", ""), data.get("ca.key", ""), data.get("bundle.crt", ""),
                   data.get("tls.crt", ""), data.get("tls.key", ""))


def webhook_dns_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.{cluster_domain}"]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _new_ca(now: dt.datetime, days: int) -> tuple[str, str]:
    key = _key()
    # a distinct subject per CA, so a verifier holding the old and the new CA (the bundle
    # during a rotation) never tries the wrong one
    label = f"forklane webhook CA {now.strftime('%Y%m%dT%H%M%S')}"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def _new_serving(ca_crt: str, ca_key: str, names: list[str], now: dt.datetime,
                 days: int) -> tuple[str, str]:
    ca = x509.load_pem_x509_certificate(ca_crt.encode())
    signer = serialization.load_pem_private_key(ca_key.encode(), password=None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])]))
        .issuer_name(ca.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                       critical=False)
        .sign(signer, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def _due(pem: str, now: dt.datetime) -> bool:
    """Missing, unreadable, or less than a third of its lifetime left."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return True
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= end - (end - start) / 3


def _covers(pem: str, names: list[str], ca_crt: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        ca = x509.load_pem_x509_certificate(ca_crt.encode())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return set(names) <= set(san.get_values_for_type(x509.DNSName)) and cert.issuer == ca.subject


def _still_valid(pem: str, now: dt.datetime) -> bool:
    try:
        return now < x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc
    except ValueError:
        return False


def plan(current: CertBundle, names: list[str], now: dt.datetime, *, ca_days: int = 3650,
         cert_days: int = 365) -> CertBundle:
    """The bundle to store: `current` itself when nothing is due, else what rotation gives."""
    ca_crt, ca_key, bundle = current.ca_crt, current.ca_key, current.bundle
    if not ca_crt or not ca_key or _due(ca_crt, now):
        old = ca_crt if ca_crt and _still_valid(ca_crt, now) else ""
        ca_crt, ca_key = _new_ca(now, ca_days)
        bundle = ca_crt + old
    elif not bundle or ca_crt not in bundle:
        bundle = ca_crt
    tls_crt, tls_key = current.tls_crt, current.tls_key
    if (not tls_crt or not tls_key or _due(tls_crt, now)
            or not _covers(tls_crt, names, ca_crt)):
        tls_crt, tls_key = _new_serving(ca_crt, ca_key, names, now, cert_days)
    return CertBundle(ca_crt, ca_key, bundle, tls_crt, tls_key)
