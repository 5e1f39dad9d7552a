"""What an alert says, as the bytes each channel sends: a mail message, a Slack body and a
generic webhook body.

One module decides the wording, the order and the fields of every channel, so mail and
webhooks never disagree about an alert and a change to what alerts say is made once. The
functions are pure (no database, no network; the caller passes the time) so that the tests
and `egen alerts test` render exactly what a real alert would send.

Titles, culprits, releases and the rest come from the applications that report errors and
are untrusted. Every such value is collapsed to one line before it reaches a header or a line
of text, escaped for HTML and for Slack, and carried verbatim only in the generic JSON. The
message is a plain 7-bit RFC 5322 message with CRLF line endings: egen's own relay queues and
DKIM-signs it afterwards like mail from any client, and 7-bit content survives a hop without
8BITMIME, where a downgrade would otherwise rewrite the body and break the signature.
"""

from __future__ import annotations

import email.policy
import email.utils
import html
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Literal, get_args

import orjson


@dataclass(frozen=True)
class Frame:
    function: str | None
    module: str | None
    filename: str | None
    lineno: int | None


@dataclass(frozen=True)
class IssueSummary:
    id: int
    project: str
    title: str
    culprit: str
    level: str
    status: str                 # unresolved | resolved | ignored
    count: int                  # events so far (exact)
    first_seen: datetime        # timezone-aware UTC
    last_seen: datetime
    environment: str | None
    release: str | None
    url: str | None             # link to the issue in egen's operator API, when known
    frames: tuple[Frame, ...]   # top in-app frames of the latest event, innermost first


Kind = Literal["new", "regressed", "spike", "critical", "test"]


@dataclass(frozen=True)
class Alert:
    kind: Kind
    issue: IssueSummary
    # why it fired beyond the kind, e.g. "130 events in the last 5 minutes"
    detail: str = ""


MAX_SUBJECT_TITLE = 120         # characters of the title in a single alert's subject
MAX_FRAMES = 5

_HEADING: dict[Kind, str] = {
    "new": "New issue", "regressed": "Regression", "spike": "Spike",
    "critical": "Critical issue", "test": "Test alert"}
_COUNTED: dict[Kind, tuple[str, str]] = {
    "new": ("new issue", "new issues"), "regressed": ("regression", "regressions"),
    "spike": ("spike", "spikes"), "critical": ("critical issue", "critical issues"),
    "test": ("test alert", "test alerts")}
_KIND_ORDER: tuple[Kind, ...] = get_args(Kind)
# Built with 7-bit transfer encodings (see the module docstring), written out with CRLF.
_BUILD_POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Headers are written unfolded up to RFC 5322's hard limit: the folder of Python 3.11
# moves a long subject that starts with "[egen]" whole onto a continuation line, which
# readers then show with a leading space. Subjects are capped well below the limit.
_WRITE_POLICY = email.policy.SMTP.clone(max_line_length=998)
_SEPARATOR = "-" * 60


def _require(alerts: Sequence[Alert]) -> None:
    if not alerts:
        raise ValueError("no alerts to render")


def _one_line(value: str) -> str:
    """A CR or LF in a header would start a new header, and the email parser also breaks
    lines at \\v, \\f and \\x1c-\\x1e, so every whitespace run becomes one space and any
    other control character (or lone surrogate, which UTF-8 cannot carry) becomes U+FFFD."""
    text = " ".join(value.split())
    if text.isprintable():
        return text
    return "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cs") else ch
                   for ch in text)


def _header_text(value: str) -> str:
    """The email package decodes an `=?charset?q?...?=` encoded word in a header value as it
    is set, and before CPython 3.11.10 writes a CR or LF decoded from one out raw, which
    starts a new header. A title is text, never an encoded word, so `=?` is broken apart."""
    return _one_line(value).replace("=?", "= ?")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _title(issue: IssueSummary) -> str:
    return _one_line(issue.title) or "(no title)"


def _utc(value: datetime) -> datetime:
    """Naive in UTC, to the second. A naive value is taken as UTC already: astimezone()
    would read it as the server's local time and shift it by the offset."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(tzinfo=None, microsecond=0)


def _human_time(value: datetime) -> str:
    return _utc(value).isoformat(sep=" ") + " UTC"


def _iso_time(value: datetime) -> str:
    return _utc(value).isoformat() + "Z"


def _kind_counts(alerts: Sequence[Alert]) -> str:
    """In a fixed order rather than arrival order, so the same mix always reads the same."""
    parts = []
    for kind in _KIND_ORDER:
        n = sum(1 for alert in alerts if alert.kind == kind)
        if n:
            parts.append(f"{n} {_COUNTED[kind][n != 1]}")
    return ", ".join(parts)


def _digest_line(alerts: Sequence[Alert]) -> str:
    return f"{len(alerts)} alerts: {_kind_counts(alerts)}"


def subject(alerts: Sequence[Alert]) -> str:
    """Short enough to read in a mailbox list, and always one line, whatever the title."""
    _require(alerts)
    if len(alerts) == 1:
        alert = alerts[0]
        title = _shorten(_header_text(alert.issue.title) or "(no title)", MAX_SUBJECT_TITLE)
        return f"[egen] {_HEADING[alert.kind]} in {_header_text(alert.issue.project)}: {title}"
    projects = ", ".join(sorted({_header_text(alert.issue.project) for alert in alerts}))
    return f"[egen] {_digest_line(alerts)} ({projects})"


def _frame_line(frame: Frame) -> str:
    """`app/views.py:42 in checkout (shop.views)`; the module stands in for a missing file
    name and is then not repeated."""
    where = _one_line(frame.filename or frame.module or "")
    if frame.lineno is not None:
        where = f"{where}:{frame.lineno}" if where else f"line {frame.lineno}"
    parts = [where] if where else []
    if frame.function:
        parts.append(f"in {_one_line(frame.function)}")
    if frame.filename and frame.module:
        parts.append(f"({_one_line(frame.module)})")
    return " ".join(parts) or "(unknown frame)"


def _heading(alert: Alert) -> str:
    heading = f"{_HEADING[alert.kind]} in {_one_line(alert.issue.project)}"
    detail = _one_line(alert.detail)
    return f"{heading}: {detail}" if detail else heading


def _fields(issue: IssueSummary) -> list[tuple[str, str]]:
    """Label and value of each line under the title; an empty culprit, environment or
    release has no line rather than a blank one."""
    rows = [("Project", issue.project), ("Culprit", issue.culprit), ("Level", issue.level),
            ("Events", str(issue.count)), ("First seen", _human_time(issue.first_seen)),
            ("Last seen", _human_time(issue.last_seen)),
            ("Environment", issue.environment or ""), ("Release", issue.release or "")]
    return [(label, _one_line(value)) for label, value in rows if _one_line(value)]


def _link(url: str | None) -> str | None:
    """Only web addresses become links: a `javascript:` href would run in some clients."""
    if url and _one_line(url).lower().startswith(("https://", "http://")):
        return _one_line(url)
    return None


def _text_block(alert: Alert) -> list[str]:
    issue = alert.issue
    fields = _fields(issue)
    width = max(len(label) for label, _ in fields) + 1
    lines = [_heading(alert), _title(issue), ""]
    lines += [f"  {label + ':':<{width}} {value}" for label, value in fields]
    frames = issue.frames[:MAX_FRAMES]
    if frames:
        lines += ["", "Frames, innermost first:"]
        lines += [f"  {_frame_line(frame)}" for frame in frames]
    if issue.url:
        lines += ["", _one_line(issue.url)]
    return lines


def _text_body(alerts: Sequence[Alert]) -> str:
    lines = [_digest_line(alerts), ""] if len(alerts) > 1 else []
    for i, alert in enumerate(alerts):
        if i:
            lines += ["", _SEPARATOR, ""]
        lines += _text_block(alert)
    return "\n".join(lines) + "\n"


def _html_block(alert: Alert) -> list[str]:
    e = html.escape
    issue = alert.issue
    lines = [f'<h2 style="margin:0 0 4px">{e(_heading(alert))}</h2>',
             f'<p style="margin:0 0 8px"><strong>{e(_title(issue))}</strong></p>',
             '<table cellpadding="2" cellspacing="0">']
    lines += [f'<tr><th align="left" valign="top">{e(label)}</th><td>{e(value)}</td></tr>'
              for label, value in _fields(issue)]
    lines.append("</table>")
    frames = issue.frames[:MAX_FRAMES]
    if frames:
        lines.append("<p>Frames, innermost first:</p>")
        lines.append("<pre>" + "\n".join(e(_frame_line(frame)) for frame in frames) + "</pre>")
    link = _link(issue.url)
    if link:
        lines.append(f'<p><a href="{e(link)}">Open the issue in egen</a></p>')
    elif issue.url:
        lines.append(f"<p>{e(_one_line(issue.url))}</p>")
    return lines


def _html_body(alerts: Sequence[Alert]) -> str:
    lines = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             f"<title>{html.escape(subject(alerts))}</title></head>",
             '<body style="font-family:sans-serif">']
    if len(alerts) > 1:
        lines.append(f"<p><strong>{html.escape(_digest_line(alerts))}</strong></p>")
    for i, alert in enumerate(alerts):
        if i:
            lines.append("<hr>")
        lines += _html_block(alert)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def render_email(alerts: Sequence[Alert], *, sender: str, recipients: Sequence[str],
                 hostname: str, now: float) -> bytes:
    _require(alerts)
    if not recipients:
        raise ValueError("no recipients for the alert message")
    msg = EmailMessage(policy=_BUILD_POLICY)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject(alerts)
    msg["Date"] = email.utils.formatdate(now, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"        # RFC 3834: no vacation replies to alerts
    msg["X-Egen-Alert"] = ",".join(dict.fromkeys(alert.kind for alert in alerts))
    msg.set_content(_text_body(alerts))
    msg.add_alternative(_html_body(alerts), subtype="html")
    return msg.as_bytes(policy=_WRITE_POLICY)


def _slack_escape(value: str) -> str:
    """The three characters Slack requires escaped; everything else is taken literally."""
    return _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_block(alert: Alert) -> str:
    issue = alert.issue
    title = _slack_escape(_title(issue))
    link = _link(issue.url)
    if link:
        target = link.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
        title = f"<{target}|{title}>"
    lines = [f"*{_HEADING[alert.kind]}* in {_slack_escape(issue.project)}: {title}"]
    if _one_line(alert.detail):
        lines.append(_slack_escape(alert.detail))
    if _one_line(issue.culprit):
        lines.append(_slack_escape(issue.culprit))
    lines.append(f"Events: {issue.count}")
    return "\n".join(lines)


def render_slack(alerts: Sequence[Alert]) -> bytes:
    """Only `text`, which Slack, Mattermost and Rocket.Chat incoming webhooks all accept."""
    _require(alerts)
    blocks = [_slack_block(alert) for alert in alerts]
    if len(alerts) > 1:
        blocks.insert(0, f"*{len(alerts)} alerts*")
    return orjson.dumps({"text": "\n\n".join(blocks)})


def _generic_alert(alert: Alert) -> dict[str, Any]:
    issue = alert.issue
    return {
        "kind": alert.kind, "detail": alert.detail,
        "issue": {
            "id": issue.id, "project": issue.project, "title": issue.title,
            "culprit": issue.culprit, "level": issue.level, "status": issue.status,
            "count": issue.count, "first_seen": _iso_time(issue.first_seen),
            "last_seen": _iso_time(issue.last_seen), "environment": issue.environment,
            "release": issue.release, "url": issue.url,
            "frames": [{"function": frame.function, "module": frame.module,
                        "filename": frame.filename, "lineno": frame.lineno}
                       for frame in issue.frames],
        },
    }


def render_generic(alerts: Sequence[Alert], *, delivery_id: str) -> bytes:
    """Values verbatim, for programs; `delivery_id` lets a receiver drop a retried one."""
    _require(alerts)
    return orjson.dumps({"type": "egen.alert", "delivery_id": delivery_id,
                         "digest": len(alerts) > 1,
                         "alerts": [_generic_alert(alert) for alert in alerts]})
