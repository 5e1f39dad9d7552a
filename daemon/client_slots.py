"""Connections held per client address, for the per-address caps of the SMTP and HTTP
listeners (Postfix's anvil does this for smtpd)."""

from __future__ import annotations

import collections

from prometheus_client import Counter


class ClientSlots:
    def __init__(self, refused: Counter) -> None:
        self.refused = refused          # labelled by reason; "max_per_client" here
        self._per_client: collections.Counter[str] = collections.Counter()

    def admit(self, client: str, *, limit: int, exempt: bool = False) -> bool:
        """Takes a slot for `client`; False (counted) when it already holds `limit`."""
        if not exempt and self._per_client[client] >= limit:
            self.refused.labels("max_per_client").inc()
            return False
        self._per_client[client] += 1
        return True

    def release(self, client: str) -> None:
        left = self._per_client[client] - 1
        if left > 0:
            self._per_client[client] = left
        else:
            del self._per_client[client]

    def held_by(self, client: str) -> int:
        return self._per_client[client]
