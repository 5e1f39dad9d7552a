"""Test hygiene shared by every test: uvloop (what the daemon runs on), asyncio debug
mode, and an unhandled exception anywhere in the loop fails the test that caused it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import uvloop

pytest_plugins = ["tests.pgfixtures"]


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("asyncio") is not None:
            item.fixturenames.append("loop_hygiene")  # type: ignore[attr-defined]


@pytest.fixture
async def loop_hygiene() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    gc.collect()  # "Task exception was never retrieved" is reported when the task is freed
    await asyncio.sleep(0)
    if errors:
        details = "; ".join(
            f"{ctx.get('message')}: {ctx.get('exception')!r}" for ctx in errors)
        pytest.fail(f"unhandled exception in the event loop: {details}")
