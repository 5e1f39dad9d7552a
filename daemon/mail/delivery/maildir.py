"""The maildir transport: delivered mail becomes files in a Maildir (tmp/, new/, cur/),
for development and staging, where a mail catcher is what people want.

Each recipient gets its own file with a Delivered-To: line on top, written to tmp/,
fsync'd and renamed into new/ — the Maildir protocol, so a reader never sees half a
message. Runs in a worker thread: it is all blocking file I/O.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from daemon.mail.delivery.outcome import Outcome
from daemon.mail.delivery.transport import Job

_counter = 0
_ready: set[Path] = set()   # maildirs whose tmp/new/cur exist, so not re-created per message


class MaildirTransport:
    """A maildir route's Transport: the blocking writes run in a worker thread."""

    per_domain = False

    def __init__(self, path: Path) -> None:
        self.path = path

    async def deliver(self, job: Job) -> list[Outcome]:
        return await asyncio.to_thread(deliver, self.path, job.queue_id, job.recipients,
                                       job.data)


def deliver(path: Path, queue_id: str, recipients: list[tuple[int, str]],
            data: bytes) -> list[Outcome]:
    global _counter  # noqa: PLW0603 - unique names within this process
    try:
        if path not in _ready:
            for sub in ("tmp", "new", "cur"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            _ready.add(path)
    except OSError as err:
        return [Outcome(i, "deferred", 451, f"4.3.0 cannot create maildir {path}: "
                        f"{err.strerror}", str(path)) for i, _ in recipients]
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    outcomes = []
    for idx, recipient in recipients:
        _counter += 1
        name = f"{time.time():.6f}.P{os.getpid()}Q{_counter}.{queue_id}-{idx}.{host}"
        tmp, new = path / "tmp" / name, path / "new" / name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, b"Delivered-To: " + recipient.encode() + b"\r\n")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, new)
        except OSError as err:
            outcomes.append(Outcome(idx, "deferred", 451, f"4.3.0 cannot write {tmp}: "
                                    f"{err.strerror}", str(path)))
            continue
        outcomes.append(Outcome(idx, "delivered", 250, f"2.0.0 delivered to maildir as {name}",
                                str(path)))
    return outcomes
