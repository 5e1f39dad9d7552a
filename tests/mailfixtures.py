"""A running egen with SMTP listeners on ephemeral loopback ports, for mail tests.

Listener indexes in `MAIL_LISTENERS`: 0 relay for trusted loopback (no TLS, no AUTH),
1 submission (STARTTLS + AUTH required), 2 implicit TLS + AUTH (465-style),
3 a listener where loopback is NOT trusted (stands for an outside client).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import dkim

from daemon import config
from daemon.app import App
from daemon.passwords import hash_password

PASSWORD = "s3cret pass"
# Low scrypt cost keeps AUTH tests fast; production hashes use the default cost.
PASSWORD_HASH = hash_password(PASSWORD, ln=4)

MAIL_LISTENERS = """
[[smtp.listeners]]
listen = "127.0.0.1:0"
tls = "none"
auth = "none"
trusted_networks = ["127.0.0.0/8", "::1/128"]

[[smtp.listeners]]
listen = "127.0.0.1:0"
tls = "starttls"
auth = "required"

[[smtp.listeners]]
listen = "127.0.0.1:0"
tls = "implicit"
auth = "required"

[[smtp.listeners]]
listen = "127.0.0.1:0"
tls = "starttls"
auth = "optional"
trusted_networks = ["192.0.2.0/24"]
"""


def mail_config(tmp_path: Path, database_url: str, *, smtp: str = "", dkim_keys: str | None = None,
                listeners: str = MAIL_LISTENERS, extra: str = "", routes: str | None = None,
                delivery: str = "") -> config.Settings:
    """Settings for a test egen. Delivery goes to a Maildir under tmp_path unless `routes`
    says otherwise: tests never send mail beyond loopback."""
    keys = dkim_keys if dkim_keys is not None else f"""
[[dkim.keys]]
domain = "example.com"
selector = "ed"
algorithm = "ed25519"
key_file = "{tmp_path / 'dkim' / 'ed.pem'}"
generate = true

[[dkim.keys]]
domain = "example.com"
selector = "rsa"
algorithm = "rsa"
key_file = "{tmp_path / 'dkim' / 'rsa.pem'}"
generate = true
"""
    if routes is None:
        routes = f"""
[[routes]]
domains = ["*"]
transport = "maildir"
path = "{tmp_path / 'maildir'}"
"""
    path = tmp_path / "egen.toml"
    path.write_text(f"""
state_dir = "{tmp_path / 'state'}"
hostname = "relay.test"
drain_timeout = "10s"
{extra}
[database]
url = "{database_url}"
[http]
listen = ["127.0.0.1:0"]
[smtp]
max_message_size = "200KB"
max_recipients = 5
{smtp}
[smtp.users.app]
password_hash = "{PASSWORD_HASH}"
allowed_senders = ["*@example.com"]
[smtp.users.alerts]
password_hash = "{PASSWORD_HASH}"
allowed_senders = ["alerts@example.org"]
[delivery]
dns_timeout = "1s"
{delivery if "nameservers" in delivery else 'nameservers = ["127.0.0.1:9"]' + chr(10) + delivery}
{listeners}
{keys}
{routes}
""")
    return config.load(path, environ={})


@contextlib.asynccontextmanager
async def started_app(settings: config.Settings) -> AsyncIterator[App]:
    """`async with started_app(...) as app:` — a context manager, not an async generator
    to iterate, so the app is stopped at once when the test body fails (an abandoned async
    generator is finalized later, after fixtures such as the database are gone)."""
    app = App(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def port(app: App, listener: int) -> int:
    return app.smtp.addresses[listener].port


def client_tls() -> ssl.SSLContext:
    """Clients of the self-signed test certificate: encrypt, do not verify."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def dns_of(app: App) -> dict[bytes, bytes]:
    """The TXT records egen's DKIM keys need, as dkimpy's dnsfunc expects them."""
    assert app.smtp.context is not None
    records = {}
    for domain in app.smtp.context.keyring.domains:
        signer = app.smtp.context.keyring.signer_for(domain)
        assert signer is not None
        for key in signer.keys:
            records[f"{key.dns_name()}.".encode()] = key.dns_value().encode()
    return records


def verify_all(message: bytes, records: dict[bytes, bytes]) -> list[bool]:
    """dkimpy's verdict for every DKIM-Signature in `message`, in order."""
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name if name.endswith(b".") else name + b".", b"")

    count = message.split(b"\r\n\r\n", 1)[0].lower().count(b"\ndkim-signature:")
    count += message.lower().startswith(b"dkim-signature:")
    checker = dkim.DKIM(message)
    return [checker.verify(idx=i, dnsfunc=lookup) for i in range(count)]
