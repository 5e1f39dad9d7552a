"""Who may hold SMTP connections, and for how long before saying anything.

Three bounds, so that one client with a thousand idle sockets cannot keep every other
client out for `smtp.timeout`: the total (`smtp.max_connections`), a cap per client
address (`smtp.max_connections_per_client`, 50 as Postfix's
smtpd_client_connection_count_limit; clients in the listener's trusted_networks are
exempt, as Postfix exempts $mynetworks), and `smtp.first_command_timeout` for a new
connection to send its first command. Each refusal is counted by reason.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from daemon.client_slots import ClientSlots


class ConnectionSlots(ClientSlots):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(Counter(
            "egen_smtp_connections_refused_total",
            "SMTP connections refused or closed by a bound: max_connections, "
            "max_per_client, first_command_timeout, idle_timeout.",
            ["reason"], registry=registry))
        self.open = Gauge("egen_smtp_connections", "Open SMTP connections.",
                          registry=registry)
