"""Deadlines kept in arrival order, expired by one sweeper: for admission and transactions.

Why: the switch gives two things a deadline on every request: a request
waiting for a transaction slot (admission.py) and a transaction's
participants (processor.py, ``timeout_s``). A trio deadline for each costs
a deadline-heap entry and two generator context managers on the way in and
out; measured for a transaction's scope at 12.4 against 6.8 us without one
(this machine, trio 0.35), and the money step's ``current_effective_deadline``
walked every enclosing scope. For admission, a cancel scope per waiter was
about a third of that module's cost at 1,000 closed-loop terminals.

Plan: entries arrive in order and, but for a reload changing the timeout,
their time runs out in the same order, so they are kept in a dict in
insertion order and one sweeper sleeps until the oldest's deadline, then
hands each expired entry to ``expire``. An entry that is done first removes
itself, so the dict holds only what is still waiting or running and the
sweeper wakes about once per timeout, not once per request.

Known weakness: after a reload shortens the timeout, an entry added under
the new timeout may expire only once the older entries' longer deadlines
have passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

K = TypeVar("K")


class Deadlines(Generic[K]):
    def __init__(self, expire: Callable[[K], None]) -> None:
        self._expire = expire  # called with each entry whose time is up, removed first
        # Entries and when each expires, oldest first.
        self._entries: dict[K, float] = {}
        self._added = trio.Event()  # set when an entry joins an empty dict

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: K, deadline: float) -> None:
        """Expire `key` at `deadline` (trio's clock) unless it is discarded or popped first."""
        entries = self._entries
        if not entries:
            self._added.set()
        entries[key] = deadline

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    def pop_oldest(self) -> K:
        """Remove and return the oldest entry (there must be one)."""
        entries = self._entries
        key = next(iter(entries))
        del entries[key]
        return key

    async def run(self) -> None:
        """The sweeper: expire each entry whose time is up, oldest first."""
        entries = self._entries
        while True:
            if not entries:
                self._added = trio.Event()
                await self._added.wait()
                continue
            key, deadline = next(iter(entries.items()))
            if trio.current_time() >= deadline:
                del entries[key]
                self._expire(key)
            else:
                await trio.sleep_until(deadline)
