"""What SIGHUP changes and what it does not: keys no component reloads are named in the
log as needing a restart, rate limits and AUTH blocks keep their state across a reload
(only their limits change), and the effective config is logged at start with every
secret masked."""

from __future__ import annotations

import logging
from pathlib import Path

import aiosmtplib
import pytest

from daemon import config
from daemon.logs import LogfmtFormatter
from daemon.reload_scope import changed_keys, needing_restart
from tests.mailfixtures import PASSWORD_HASH, mail_config, port, started_app
from tests.test_smtp_security import RELAY, TIMEOUT, message

RATE = "[smtp.rate_per_client]\nper_minute = 1\nburst = 2\n"


def rewritten(settings: config.Settings, old: str, new: str) -> None:
    text = settings.source.read_text()
    assert old in text
    settings.source.write_text(text.replace(old, new))


def test_changed_keys_are_dotted_and_only_unclaimed_ones_need_a_restart(
        tmp_path: Path, pg_url: str) -> None:
    before = mail_config(tmp_path, pg_url)
    rewritten(before, "max_recipients = 5", "max_recipients = 7")
    rewritten(before, 'dns_timeout = "1s"', 'dns_timeout = "2s"')
    after = config.load(before.source, environ={})
    changed = changed_keys(before, after)
    assert changed == ["delivery.dns_timeout", "smtp.max_recipients"]
    assert needing_restart(changed, ["smtp.max_recipients", "dkim"]) == ["delivery.dns_timeout"]
    assert needing_restart(changed, ["smtp", "delivery"]) == []
    assert changed_keys(after, config.load(before.source, environ={})) == []


def restarts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.__dict__["egen_fields"]["key"] for r in caplog.records
            if r.getMessage().startswith("config change needs a restart")]


async def send(app_port: int, subject: str, source: str = "127.0.0.1") -> int:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app_port, source_address=(source, 0),
                             local_hostname="client.test", timeout=TIMEOUT)
    await client.connect()
    try:
        await client.sendmail("app@example.com", ["ops@example.org"], message(subject=subject))
    except aiosmtplib.SMTPSenderRefused as err:
        return err.code
    finally:
        await client.quit()
    return 250


async def test_reload_keeps_limiter_state_and_names_what_needs_a_restart(
        tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="egen")
    settings = mail_config(tmp_path, pg_url, smtp=RATE)
    async with started_app(settings) as app:
        relay = port(app, RELAY)
        assert [await send(relay, f"burst {n}") for n in range(2)] == [250, 250]
        rewritten(settings, "max_recipients = 5", "max_recipients = 7")
        rewritten(settings, 'dns_timeout = "1s"', 'dns_timeout = "2s"')
        assert await app.reload()
        # The bucket this client emptied is still empty: a SIGHUP is no way around it.
        assert await send(relay, "after reload") == 451
        assert app.smtp.settings.smtp.max_recipients == 7
        restart = [LogfmtFormatter().format(r) for r in caplog.records
                   if r.getMessage().startswith("config change needs a restart")]
        assert len(restart) == 1 and "key=delivery.dns_timeout" in restart[0]
        # The new limit applies: a client not seen before has the new burst of 3, and
        # the one that emptied its bucket gains no tokens from the larger cap.
        rewritten(settings, "burst = 2", "burst = 3")
        assert await app.reload()
        assert [await send(relay, f"new {n}", "127.0.0.2") for n in range(4)] == [
            250, 250, 250, 451]
        assert await send(relay, "still empty") == 451
        # Still not applied, so named again; once taken back, no longer.
        assert restarts(caplog) == ["delivery.dns_timeout"] * 2
        rewritten(settings, 'dns_timeout = "2s"', 'dns_timeout = "1s"')
        assert await app.reload()
        assert restarts(caplog) == ["delivery.dns_timeout"] * 2


async def test_the_effective_config_is_logged_at_start_with_secrets_masked(
        tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="egen")
    async with started_app(mail_config(tmp_path, pg_url)):
        lines = {r.__dict__.get("egen_fields", {}).get("section"): LogfmtFormatter().format(r)
                 for r in caplog.records if r.getMessage() == "config"}
    assert {"main", "smtp", "database", "http", "delivery", "ingest", "web"} <= set(lines)
    assert "smtp.max_recipients=5" in lines["smtp"]
    assert "database.url=***" in lines["database"]
    assert PASSWORD_HASH not in "".join(lines.values())
    assert '\\"password_hash\\":\\"***\\"' in lines["smtp"]


async def test_project_keys_are_masked_in_the_config_log(
        tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="egen")
    extra = '[[projects]]\nname = "shop"\nid = 7\nkeys = ["shopkey-0123456789"]\n'
    async with started_app(mail_config(tmp_path, pg_url, extra=extra)):
        text = "".join(LogfmtFormatter().format(r) for r in caplog.records
                       if r.getMessage() == "config")
    assert "shopkey-0123456789" not in text and "shop…" in text
