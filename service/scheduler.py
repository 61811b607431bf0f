"""Earliest-deadline-first admission to a bounded pool of engine workers.

Every engine call (one chunk of one session) goes through
:meth:`EdfScheduler.run` with a deadline: the moment that session's listener
would run out of audio (``time.monotonic`` seconds). When more calls wait than
there are workers, the one with the earliest deadline runs next, so a new
session's first chunk (its deadline is already due) jumps ahead of sessions
with seconds buffered. Calls run in a thread pool; the event loop never runs
the engine.

Calls cannot be pre-empted, so an urgent call could still wait for a long
one to finish. ``urgent_slots`` extra workers are therefore reserved for calls
due within ``urgent_within`` seconds: a listener about to run dry gets a
thread at once (sharing the cores briefly) instead of waiting ~100-250 ms
behind a large chunk of a session that has seconds buffered.

An utterance's first two chunks are the calls whose listener has almost
nothing buffered: the second must be done within the 186 ms the first one
plays (16 latent frames of a 22 050 Hz Piper voice) + 20 ms. It is
asked for before the first frame is sent, so its deadline is already past
and it is urgent at once; it costs ~60 ms on a free core. The soak's
underruns at 80 % load were all there (``audio_sent_ms`` 200, segment 0,
in the server's underrun log lines, ``engine_queue`` > 0): two utterances
starting within ~0.2 s of each other, one urgent slot, both normal workers
inside long chunks. So the server runs two urgent slots (``--urgent-workers``),
and ``urgent_within`` (0.25 s) also covers the third chunk and sentence
boundaries a little earlier than 0.15 s did.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

T = TypeVar("T")
Slot = Literal["normal", "urgent"]


class EdfScheduler:
    """``workers`` engine slots by earliest deadline, plus ``urgent_slots`` for due calls."""

    def __init__(
        self,
        workers: int,
        *,
        urgent_slots: int = 1,
        urgent_within: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1 or urgent_slots < 0:
            raise ValueError("workers must be >= 1 and urgent_slots >= 0")
        self.workers = workers
        self.urgent_slots = urgent_slots
        self.urgent_within = urgent_within
        self._clock = clock
        self._pool = ThreadPoolExecutor(workers + urgent_slots, thread_name_prefix="engine")
        self._free: dict[Slot, int] = {"normal": workers, "urgent": urgent_slots}
        self._waiting: list[tuple[float, int, asyncio.Future[Slot]]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        """Calls waiting for a worker."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Calls running now."""
        return self.workers + self.urgent_slots - sum(self._free.values())

    async def run(self, deadline: float, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a worker once it is this call's turn; return its result.

        Cancelling the awaiting task while it waits gives up its place; once
        ``fn`` has started it runs to completion in its thread and its slot is
        free only when it returns.
        """
        slot = await self._acquire(deadline)
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda _: self._release(slot))
            raise
        except BaseException:
            self._release(slot)
            raise
        self._release(slot)
        return result

    def _due(self, deadline: float) -> bool:
        return deadline - self._clock() <= self.urgent_within

    async def _acquire(self, deadline: float) -> Slot:
        if self._free["normal"] > 0 and not self._waiting:
            self._free["normal"] -= 1
            return "normal"
        if self._free["urgent"] > 0 and self._due(deadline):
            self._free["urgent"] -= 1
            return "urgent"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Slot] = loop.create_future()
        entry = (deadline, next(self._order), future)
        heapq.heappush(self._waiting, entry)
        if self.urgent_slots:  # when this call falls due, a free urgent slot may take it
            loop.call_later(max(0.0, deadline - self.urgent_within - self._clock()), self._promote)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(future.result())  # handed a slot just as we were cancelled
            elif entry in self._waiting:  # a release may already have popped it
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def _release(self, slot: Slot) -> None:
        """Hand ``slot`` to the earliest waiter that may use it, else free it."""
        self._free[slot] += 1
        self._hand_out(slot)

    def _promote(self) -> None:
        self._hand_out("urgent")

    def _hand_out(self, slot: Slot) -> None:
        while self._free[slot] > 0 and self._waiting:
            deadline, _, future = self._waiting[0]
            if future.done():
                heapq.heappop(self._waiting)
                continue
            if slot == "urgent" and not self._due(deadline):
                return
            heapq.heappop(self._waiting)
            self._free[slot] -= 1
            future.set_result(slot)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
