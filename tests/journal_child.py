"""Crash-test child: append forever from many tasks, print each id once append() returned.

Usage: journal_child.py DIRECTORY ROUND WORKERS. The parent SIGKILLs it mid-stream and checks
that every id printed here survives a reopen.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

from daemon.journal.log import Journal


def payload_for(ident: str) -> bytes:
    """Deterministic, self-checking payload of 1..~3000 bytes for an id."""
    digest = hashlib.sha256(ident.encode()).digest()
    size = int.from_bytes(digest[:2], "big") % 3000
    body = (digest * (size // len(digest) + 1))[:size]
    return ident.encode() + b":" + body


async def worker(journal: Journal, round_: str, w: int) -> None:
    k = 0
    while True:
        ident = f"{round_}-{w}-{k}"
        await journal.append(payload_for(ident))
        sys.stdout.write(ident + "\n")
        sys.stdout.flush()
        k += 1


async def main() -> None:
    directory, round_, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    journal = Journal(directory, name="crash", max_size=2**30, segment_size=64 * 1024)
    await journal.open()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(worker(journal, round_, w) for w in range(workers)))


if __name__ == "__main__":
    asyncio.run(main())
