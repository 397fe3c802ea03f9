"""Fair sharing of the heavy work (embedding, probe fitting, big bootstraps).

At most ``max_workers`` computations run at once (each on a thread of one bounded
executor), and at most ``per_token`` of them for one token, so one user's batch of
requests cannot starve everyone else. Waiters are served first come, first served among
those whose token is under its limit; each waiter can read its 1-based queue position
(0 once running) and is woken whenever that position may have changed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from align.errors import InvalidInputError


class Ticket:
    """One request's place in the queue."""

    def __init__(self, scheduler: FairScheduler, token: str) -> None:
        self.scheduler = scheduler
        self.token = token
        self.granted = asyncio.Event()
        self.changed = asyncio.Event()
        self.released = False

    @property
    def position(self) -> int:
        """1-based place among waiters; 0 once it holds a worker."""
        if self.granted.is_set():
            return 0
        try:
            return self.scheduler._waiting.index(self) + 1
        except ValueError:
            return 0

    async def wait_change(self, timeout: float | None = None) -> None:
        """Wait until granted or the queue moved (or ``timeout``)."""
        self.changed.clear()
        if self.granted.is_set():
            return
        waiter = asyncio.ensure_future(self.changed.wait())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiter.cancel()

    def release(self) -> None:
        self.scheduler._release(self)


class FairScheduler:
    def __init__(self, max_workers: int = 2, per_token: int = 1) -> None:
        if max_workers < 1:
            raise InvalidInputError("max_workers", f"is {max_workers}", "at least 1")
        if per_token < 1:
            raise InvalidInputError("per_token", f"is {per_token}", "at least 1")
        self.max_workers = max_workers
        self.per_token = per_token
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="align-work")
        self._waiting: list[Ticket] = []
        self._running: dict[str, int] = defaultdict(int)
        self._n_running = 0

    @property
    def n_running(self) -> int:
        return self._n_running

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    def enqueue(self, token: str) -> Ticket:
        ticket = Ticket(self, token)
        self._waiting.append(ticket)
        self._dispatch()
        return ticket

    def _dispatch(self) -> None:
        while self._n_running < self.max_workers:
            pick = next((t for t in self._waiting if self._running[t.token] < self.per_token), None)
            if pick is None:
                break
            self._waiting.remove(pick)
            self._running[pick.token] += 1
            self._n_running += 1
            pick.granted.set()
        for t in self._waiting:  # positions may have moved: wake the waiters to re-read
            t.changed.set()

    def _release(self, ticket: Ticket) -> None:
        if ticket.released:
            return
        ticket.released = True
        if ticket.granted.is_set():
            self._running[ticket.token] -= 1
            self._n_running -= 1
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        self._dispatch()

    @asynccontextmanager
    async def slot(self, token: str) -> AsyncIterator[Ticket]:
        """``async with scheduler.slot(token) as t: ...`` (waits without progress)."""
        ticket = self.enqueue(token)
        try:
            await ticket.granted.wait()
            yield ticket
        finally:
            ticket.release()

    def shutdown(self, wait: bool = True) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=True)
