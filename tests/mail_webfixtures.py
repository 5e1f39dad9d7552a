"""An egen with web users whose mail goes to a test smarthost (an aiosmtpd sink on
loopback that answers each recipient as the test says), and helpers to send mail through
its SMTP listener (tests.test_delivery's `send` and `wait_status`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from daemon.app import App
from tests.mailfixtures import mail_config, started_app
from tests.smtpsink import Sink
from tests.webfixtures import WEB_USERS


def message(subject: str, to: str = "ops@example.org") -> bytes:
    return (f"From: App <app@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
            "Deployed.\r\n").encode()


@contextlib.asynccontextmanager
async def mail_web_app(tmp_path: Path, pg_url: str, *, delivery: str = "", smtp: str = ""
                       ) -> AsyncIterator[tuple[App, Sink]]:
    sink = Sink("127.0.0.1")
    await sink.start()
    routes = (f'[[routes]]\ndomains = ["*"]\ntransport = "smarthost"\nhost = "127.0.0.1"\n'
              f'port = {sink.port}\ntls = "none"\n')
    settings = mail_config(tmp_path, pg_url, routes=routes, smtp=smtp, extra=f"[web]\n{WEB_USERS}",
                           delivery='poll_interval = "100ms"\n' + delivery)
    try:
        async with started_app(settings) as app:
            yield app, sink
    finally:
        await sink.stop()
