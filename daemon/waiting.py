"""Waiting for an asyncio.Event with a timeout, in tasks that are stopped by cancel().

Python 3.11's `asyncio.wait_for(event.wait(), t)` loses a cancel() that lands in the same
loop turn as the event being set (CPython gh-86296, fixed in 3.12 by building wait_for on
asyncio.timeout): the wait returns normally, the cancel is gone, and a stop() that awaits
the cancelled task waits forever. `asyncio.timeout` keeps the cancel, so it is used here.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """True once `event` is set, False after `seconds` (None: no limit)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
