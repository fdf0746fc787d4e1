"""A shared writer kept running as the supervisor keeps it (tests of both shared writers)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from switchd.shared_writer import SharedWriter


@asynccontextmanager
async def supervised(
    writer: SharedWriter, held: Callable[[], bool] = lambda: False
) -> AsyncIterator[SharedWriter]:
    """`writer` started, and started again whenever it exits by the supervisor's
    ``poll`` (unless `held` says not yet); closed at the end."""
    writer.start()
    try:
        async with trio.open_nursery() as nursery:

            async def supervise() -> None:
                while True:
                    if not held():
                        writer.poll(time.monotonic())
                    await trio.sleep(0.05)

            nursery.start_soon(supervise)
            yield writer
            nursery.cancel_scope.cancel()
    finally:
        writer.close()
