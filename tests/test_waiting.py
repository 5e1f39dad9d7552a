"""wait_set: a task stopped by cancel() stops, even when the cancel lands in the same loop
turn as the event it waits for being set (asyncio.wait_for on 3.11 loses that cancel, and
a component's stop() then waited forever on the task)."""

from __future__ import annotations

import asyncio

import pytest

from daemon.waiting import wait_set


async def test_a_cancel_that_lands_with_the_event_is_kept() -> None:
    event = asyncio.Event()
    rounds = 0

    async def loop_like_a_component() -> None:
        nonlocal rounds
        while True:
            await wait_set(event, 30.0)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop_like_a_component())
    await asyncio.sleep(0)        # the task is now inside wait_set
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)
    assert rounds <= 1


async def test_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, None) is True
    assert await wait_set(event, 0) is True     # already set: no wait, so no timeout
