"""Delivery: the worker that claims due recipients, the transports that carry mail (MX,
smarthost, maildir), retries and bounces."""
