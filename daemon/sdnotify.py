"""systemd's notify protocol (READY=1, STOPPING=1, WATCHDOG=1), written directly.

The protocol is one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET; a dependency
for that would be larger than the code. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from daemon.logs import fields, get_logger

log = get_logger("sdnotify")


def notify(message: str) -> bool:
    """Send one notification; True when a supervisor was there to receive it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as err:
        log.warning("sd_notify failed", extra=fields(socket=address, error=str(err)))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half systemd's WatchdogSec), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000
