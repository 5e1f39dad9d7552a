"""A URL as it may be shown or logged: any password in it replaced by ***."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

UNPARSEABLE = "<unparseable database url>"


def mask_url_password(url: str) -> str:
    """The URL with any password (user:pw@ or ?password=) replaced by ***; a URL that
    cannot be parsed is shown as a placeholder, since the password could be anywhere."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return UNPARSEABLE
    netloc = parts.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))
