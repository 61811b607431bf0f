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

Which waiting call a free worker takes, in this order:

1. a listener's next chunk due within ``protect_within`` (0.5 s): it is
   hearing audio and would otherwise hear a gap (earliest deadline first);
2. a first chunk (``first=True``: the listener hears nothing yet), oldest first;
3. any other chunk, earliest deadline first.

An urgent slot takes only calls that are due (within ``urgent_within``) or
first chunks, in the same order. Rule 1 is for bursts: when many utterances
start together every listener used to hear its first 0.8 s and then, all
together, a gap, because the other first chunks (whose deadline, "now", is
the earliest there is) all ran before anyone's third chunk. With rule 1 a
listener's next chunk goes first once it is about to be needed, and the
first chunks fill the time in between (``docs/reliability.md``, "Bursts").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")
Slot = Literal["normal", "urgent"]


@dataclass(eq=False)
class _Waiter:
    deadline: float
    order: int
    first: bool
    future: asyncio.Future[Slot]


class EdfScheduler:
    """``workers`` engine slots by earliest deadline, plus ``urgent_slots`` for due calls."""

    def __init__(
        self,
        workers: int,
        *,
        urgent_slots: int = 1,
        urgent_within: float = 0.25,
        protect_within: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1 or urgent_slots < 0:
            raise ValueError("workers must be >= 1 and urgent_slots >= 0")
        self.workers = workers
        self.urgent_slots = urgent_slots
        self.urgent_within = urgent_within
        self.protect_within = protect_within
        self._clock = clock
        self._pool = ThreadPoolExecutor(workers + urgent_slots, thread_name_prefix="engine")
        self._free: dict[Slot, int] = {"normal": workers, "urgent": urgent_slots}
        self._waiting: list[_Waiter] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        """Calls waiting for a worker."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Calls running now."""
        return self.workers + self.urgent_slots - sum(self._free.values())

    async def run(self, deadline: float, fn: Callable[[], T], *, first: bool = False) -> T:
        """Run ``fn`` in a worker once it is this call's turn; return its result.

        ``deadline`` is when the listener runs out of audio (for a ``first``
        call: when its text arrived). Waiting calls are handed out as the
        module docstring says; ``first`` marks a call whose listener hears
        nothing yet.
        Cancelling the awaiting task while it waits gives up its place; once
        ``fn`` has started it runs to completion in its thread and its slot is
        free only when it returns.
        """
        slot = await self._acquire(deadline, first)
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

    async def _acquire(self, deadline: float, first: bool) -> Slot:
        if self._free["normal"] > 0 and not self._waiting:
            self._free["normal"] -= 1
            return "normal"
        if self._free["urgent"] > 0 and (first or self._due(deadline)):
            self._free["urgent"] -= 1
            return "urgent"
        loop = asyncio.get_running_loop()
        waiter = _Waiter(deadline, next(self._order), first, loop.create_future())
        self._waiting.append(waiter)
        if self.urgent_slots and not first:  # when it falls due, a free urgent slot may take it
            loop.call_later(max(0.0, deadline - self.urgent_within - self._clock()), self._promote)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release(waiter.future.result())  # handed a slot as we were cancelled
            elif waiter in self._waiting:  # a release may already have taken it out
                self._waiting.remove(waiter)
            raise

    def _release(self, slot: Slot) -> None:
        """Hand ``slot`` to the waiter that should have it next, else free it."""
        self._free[slot] += 1
        self._hand_out(slot)

    def _promote(self) -> None:
        self._hand_out("urgent")

    def _rank(self, waiter: _Waiter, now: float) -> tuple[int, float, int]:
        if not waiter.first and waiter.deadline - now <= self.protect_within:
            tier = 0  # a listener about to run out
        else:
            tier = 1 if waiter.first else 2
        return tier, waiter.deadline, waiter.order

    def _hand_out(self, slot: Slot) -> None:
        self._waiting = [w for w in self._waiting if not w.future.done()]
        while self._free[slot] > 0 and self._waiting:
            now = self._clock()
            eligible = [
                w
                for w in self._waiting
                if slot == "normal" or w.first or w.deadline - now <= self.urgent_within
            ]
            if not eligible:
                return
            chosen = min(eligible, key=lambda w: self._rank(w, now))
            self._waiting.remove(chosen)
            self._free[slot] -= 1
            chosen.future.set_result(slot)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
