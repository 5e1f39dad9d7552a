"""The error tracker: events arrive (HTTP, UDP), are normalized, fingerprinted into issues
and batched into Postgres. Protocol parsing lives apart from storage, as in daemon.mail."""
