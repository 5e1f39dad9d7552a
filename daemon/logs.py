"""One log line per event, as logfmt or JSON, on stderr where journald collects it.

Every module logs through stdlib `logging` under the `egen.` namespace and passes
structured fields with `extra=fields(...)`, so the same call renders as
`key=value` pairs or as a JSON object depending on `log.format`.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from typing import Any

import orjson

_FIELDS = "egen_fields"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """Structured fields for one log call: `log.info("opened", extra=fields(dir=d))`."""
    return {_FIELDS: values}


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"egen.{name}")


_NEEDS_QUOTES = re.compile(r'[ ="\\]')


def _timestamp(record: logging.LogRecord) -> str:
    return f"{_second_text(int(record.created))}.{int(record.msecs):03d}Z"


@functools.lru_cache(maxsize=4)
def _second_text(second: int) -> str:
    """Formatted once per second, not once per line: the mail log writes a line per
    message, hundreds a second under load."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and _NEEDS_QUOTES.search(text) is None:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_logfmt_value(record.getMessage())}",
        ]
        for key, value in getattr(record, _FIELDS, {}).items():
            parts.append(f"{key}={_logfmt_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    """(Re)configure the root `egen` logger; safe to call again on SIGHUP."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger("egen")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    root.propagate = False
