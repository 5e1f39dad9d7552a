"""The HTTP side of egen: the one aiohttp server every endpoint mounts on (server.py),
and the pages people read behind a login: issues, events, projects."""
