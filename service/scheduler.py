"""Earliest-deadline-first admission to a bounded pool of engine workers.

Every engine call (one chunk of one session) goes through
:meth:`EdfScheduler.run` with a deadline: the moment that session's listener
would run out of audio. When more calls wait than there are workers, the one
with the earliest deadline runs next, so a new session's first chunk (its
deadline is already due) jumps ahead of sessions with seconds buffered.
Calls run in a thread pool; the event loop never runs the engine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class EdfScheduler:
    """``workers`` engine slots handed out by earliest deadline (ties: arrival order)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engine")
        self._free = workers
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        """Calls waiting for a worker."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return self.workers - self._free

    async def run(self, deadline: float, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker once it is this call's turn; return its result.

        Cancelling the awaiting task while it waits gives up its place; once
        ``fn`` has started it runs to completion in its thread.
        """
        await self._acquire(deadline)
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread is still busy: the slot is free only when fn returns.
            future.add_done_callback(lambda _: self._release())
            raise
        except BaseException:
            self._release()
            raise
        self._release()
        return result

    async def _acquire(self, deadline: float) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (deadline, next(self._order), future)
        heapq.heappush(self._waiting, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # we were handed a slot just as we were cancelled
            elif entry in self._waiting:  # a release may already have popped it
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
