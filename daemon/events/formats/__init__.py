"""The formats events arrive in (Sentry envelopes, GELF, syslog, shipper JSON, text
tracebacks), each turned into a Sentry-shaped event. Pure functions: no I/O."""
