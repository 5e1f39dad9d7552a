"""Where events arrive: the HTTP ingest endpoints (Sentry, native JSON, GELF) and the UDP
and TCP listeners."""
