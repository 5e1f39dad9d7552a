"""SIGHUP's effect on the relay: new certificate, users and DKIM keys for new sessions;
a broken replacement is refused and the running setup stays."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import aiosmtplib
from cryptography import x509

from daemon import config
from daemon.mail.intake.tls import ensure_self_signed
from tests.mailfixtures import PASSWORD, client_tls, mail_config, port, started_app

MESSAGE = b"From: app@example.com\r\nSubject: s\r\n\r\nbody\r\n"


async def served_name(smtp_port: int) -> str:
    """The common name of the certificate the server presents after STARTTLS."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, start_tls=True,
                               tls_context=client_tls()) as client:
        transport = client.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def rewrite(settings: config.Settings, old: str, new: str) -> None:
    text = settings.source.read_text()
    assert old in text
    settings.source.write_text(text.replace(old, new))


async def test_reload_swaps_certificate_and_keys_and_keeps_them_on_errors(
        tmp_path: Path, pg_url: str) -> None:
    first_cert, first_key = ensure_self_signed(tmp_path / "first", "first.test")
    second_cert, second_key = ensure_self_signed(tmp_path / "second", "second.test")
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first_cert, live_cert)
    shutil.copy(first_key, live_key)
    settings = mail_config(tmp_path, pg_url,
                           smtp=f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\n')
    async with started_app(settings) as app:
        assert await served_name(port(app, 1)) == "first.test"
        assert app.smtp.context is not None
        assert app.smtp.context.keyring.signer_for("example.com") is not None

        shutil.copy(second_cert, live_cert)
        shutil.copy(second_key, live_key)
        rewrite(settings, 'domain = "example.com"', 'domain = "example.net"')
        assert await app.reload() is True
        assert await served_name(port(app, 1)) == "second.test"
        assert app.smtp.context.keyring.signer_for("example.com") is None
        assert app.smtp.context.keyring.signer_for("example.net") is not None

        live_key.write_text("not a key\n")
        rewrite(settings, 'domain = "example.net"', 'domain = "example.org"')
        assert await app.reload() is True  # the config is valid; the smtp part refuses
        assert await served_name(port(app, 1)) == "second.test"
        assert app.smtp.context.keyring.signer_for("example.net") is not None

        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port(app, 1), start_tls=True,
                                   tls_context=client_tls()) as client:
            await client.login("app", PASSWORD)
            await client.sendmail("app@example.com", ["o@x.test"], MESSAGE)
