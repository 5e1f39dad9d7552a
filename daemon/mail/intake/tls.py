"""TLS material for the SMTP listeners: load the configured certificate, or make a
self-signed one for development, and reload in place on SIGHUP.

Reloading calls `load_cert_chain` on the live SSLContext: every listener and every
future STARTTLS shares that one object, so new handshakes pick up the new certificate
while established sessions keep theirs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.logs import fields, get_logger

log = get_logger("tls")


class TlsError(Exception):
    pass


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    load_into(context, cert, key)
    return context


def load_into(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Validate the pair on a scratch context first, so a bad file never half-replaces
    the certificate in use."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_cert_chain(cert, key)
    except FileNotFoundError as err:
        raise TlsError(f"cannot read {err.filename}: no such file") from None
    except (ssl.SSLError, OSError) as err:
        raise TlsError(f"cannot use certificate {cert} with key {key}: {err}") from None
    context.load_cert_chain(cert, key)


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for `hostname` under `directory`, made once."""
    cert, key = directory / "selfsigned.crt", directory / "selfsigned.key"
    if cert.exists() and key.exists():
        return cert, key
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_bytes = private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("generated self-signed certificate", extra=fields(cert=str(cert),
                                                               hostname=hostname))
    return cert, key
