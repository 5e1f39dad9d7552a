"""Alerts: rules over issue changes, sent by mail through egen's own queue and by webhooks."""
