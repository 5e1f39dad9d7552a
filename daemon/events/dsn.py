"""The DSN an SDK is configured with: `scheme://<key>@<host>[:port][/prefix]/<project id>`.

Sentry's SDKs derive the ingest URLs from it (`<prefix>/api/<project id>/envelope/`), so it
must name the address SDKs reach egen at: `ingest.public_url` when egen sits behind a
proxy or a public name, else the first `http.listen` address.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from daemon.units import HostPort


def dsn(public_url: str | None, listen: HostPort, key: str, project_id: int) -> str:
    if public_url is None:
        return f"http://{key}@{listen}/{project_id}"
    parts = urlsplit(public_url)
    prefix = parts.path.rstrip("/")
    return f"{parts.scheme}://{key}@{parts.netloc}{prefix}/{project_id}"
