"""TLS contexts for the SMTP edge, with a self-signed pair generated when none is configured."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from remails.config import Settings

__all__ = ["ensure_certificate", "server_context"]


def _self_signed(hostname: str, cert_path: Path, key_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):  # a hostname, not an IP
        alt.append(x509.IPAddress(ipaddress.ip_address(hostname)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure_certificate(settings: Settings) -> tuple[Path, Path]:
    """The configured cert/key pair, or a self-signed one kept in the data dir."""
    if settings.tls_cert and settings.tls_key:
        return settings.tls_cert, settings.tls_key
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    cert_path = settings.data_dir / "tls-cert.pem"
    key_path = settings.data_dir / "tls-key.pem"
    if not (cert_path.exists() and key_path.exists()):
        _self_signed(settings.hostname, cert_path, key_path)
    return cert_path, key_path


def server_context(settings: Settings) -> ssl.SSLContext:
    cert_path, key_path = ensure_certificate(settings)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context
