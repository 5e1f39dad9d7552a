"""What a channel is sent: issue summaries read from the database (with the top in-app
frames of the latest stored event), rendered in the channel's form. Shared by the
dispatcher and `egen alerts test`, so a test alert looks exactly like a real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from daemon.alerts.render import (
    Alert,
    Frame,
    IssueSummary,
    render_email,
    render_generic,
    render_slack,
)
from daemon.alerts.settings import AlertSettings, ChannelSettings
from daemon.events.storage import queries
from daemon.events.storage.queries import Db

FRAMES = 5


def issue_url(base_url: str, issue_id: int) -> str:
    """The issue in the operator API, at the address SDKs and operators reach egen
    (`Settings.base_url`)."""
    return f"{base_url.rstrip('/')}/api/v1/issues/{issue_id}"


def top_frames(exceptions: list[dict[str, Any]]) -> tuple[Frame, ...]:
    """Innermost first, the application's own frames when the event marks any."""
    if not exceptions:
        return ()
    frames = exceptions[-1]["frames"]
    own = [f for f in frames if f.get("in_app")] or frames
    return tuple(Frame(function=f["function"], module=f["module"], filename=f["filename"],
                       lineno=f["lineno"]) for f in reversed(own[-FRAMES:]))


def _time(text: str | None) -> datetime:
    return datetime.fromisoformat(text) if text else datetime.now(UTC)


async def summaries(db: Db, base_url: str, issue_ids: Sequence[int]
                    ) -> dict[int, IssueSummary]:
    found = {}
    for issue_id in dict.fromkeys(issue_ids):
        issue = await queries.get_issue(db, issue_id, events=1)
        if issue is None:
            continue
        found[issue_id] = IssueSummary(
            id=issue["id"], project=issue["project"], title=issue["title"],
            culprit=issue["culprit"], level=issue["level"], status=issue["status"],
            count=issue["count"], first_seen=_time(issue["first_seen"]),
            last_seen=_time(issue["last_seen"]), environment=issue["environment"],
            release=issue["release"], url=issue_url(base_url, issue_id),
            frames=top_frames(issue["stacktrace"]))
    return found


def body(channel: ChannelSettings, alerts: Sequence[Alert], *, sender: str, hostname: str,
         now: float, delivery_id: str) -> bytes:
    if channel.type == "email":
        return render_email(alerts, sender=sender, recipients=channel.to,
                            hostname=hostname, now=now)
    if channel.format == "slack":
        return render_slack(alerts)
    return render_generic(alerts, delivery_id=delivery_id)


def sender(alerts: AlertSettings, hostname: str) -> str:
    return str(alerts.sender or f"egen@{hostname}")


def sample_alert(project: str, now: float) -> Alert:
    """What `egen alerts test` sends: plainly a test, shaped like a real alert."""
    seen = datetime.fromtimestamp(now, UTC)
    return Alert("test", IssueSummary(
        id=0, project=project, title="egen test alert: this is what an alert looks like",
        culprit="egen alerts test", level="error", status="unresolved", count=1,
        first_seen=seen, last_seen=seen, environment=None, release=None, url=None,
        frames=(Frame(function="test_alert", module="egen.alerts", filename="egen/alerts.py",
                      lineno=1),)),
        detail="sent by `egen alerts test`; no issue is involved")
