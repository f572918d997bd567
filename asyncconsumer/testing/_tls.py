"""Throw-away TLS material for test brokers: a CA, a broker and a client certificate.

Made with the ``cryptography`` package (the ``testing`` extra), as PEM files that
both Apache Kafka (``ssl.keystore.type=PEM``) and Python's :mod:`ssl` read. The keys
are EC P-256 (quick to generate), unencrypted, and live only as long as the
directory they were written to; nothing here is fit for production.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertificateFiles", "make_certificates"]


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """The PEM files :func:`make_certificates` wrote."""

    ca_file: Path
    """The CA certificate: what clients (and the broker, for client certificates) trust."""
    broker_file: Path
    """The broker's private key (PKCS#8) followed by its certificate: Kafka's PEM keystore."""
    client_cert_file: Path
    """A client certificate signed by the CA (subject ``CN=<client_name>``), for mutual TLS."""
    client_key_file: Path
    """The client certificate's private key (PKCS#8, unencrypted)."""
    untrusted_ca_file: Path
    """Another CA that signed nothing here: trusting it alone must fail the handshake."""


def make_certificates(
    directory: Path,
    *,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    client_name: str = "client",
    days: int = 2,
) -> CertificateFiles:
    """Write a fresh CA, a broker certificate valid for ``hosts`` (IP addresses and DNS
    names, as subject alternative names) and a client certificate into ``directory``."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - the testing extra brings it
        raise RuntimeError(
            "test certificates need the cryptography package: pip install 'asyncconsumer[testing]'"
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(common: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asyncconsumer tests"),
                x509.NameAttribute(NameOID.COMMON_NAME, common),
            ]
        )

    def ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        private = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(name(common))
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(private.public_key()), critical=False
            )
            .sign(private, hashes.SHA256())
        )
        return private, cert

    def leaf(
        common: str,
        issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
        usage: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName],
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        private = key()
        issuer_key, issuer_cert = issuer
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(issuer_cert.subject)
            .public_key(private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return private, builder.sign(issuer_key, hashes.SHA256())

    def pem_key(private: ec.EllipticCurvePrivateKey) -> bytes:
        return private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    authority = ca("asyncconsumer test CA")
    broker_key, broker_cert = leaf("broker", authority, ExtendedKeyUsageOID.SERVER_AUTH, alt)
    client_key, client_cert = leaf(client_name, authority, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _, stranger = ca("an untrusted CA")

    files = CertificateFiles(
        ca_file=directory / "ca.pem",
        broker_file=directory / "broker.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client.key",
        untrusted_ca_file=directory / "untrusted-ca.pem",
    )
    files.ca_file.write_bytes(pem_cert(authority[1]))
    files.broker_file.write_bytes(pem_key(broker_key) + pem_cert(broker_cert))
    files.broker_file.chmod(0o600)
    files.client_cert_file.write_bytes(pem_cert(client_cert))
    files.client_key_file.write_bytes(pem_key(client_key))
    files.client_key_file.chmod(0o600)
    files.untrusted_ca_file.write_bytes(pem_cert(stranger))
    return files
