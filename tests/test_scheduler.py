"""Tests for service.scheduler: earliest-deadline-first admission to a bounded worker pool."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from service.scheduler import EdfScheduler

TIMEOUT = 5.0


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """Holds a call busy in its worker thread until set; always set at teardown."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def sched() -> Iterator[EdfScheduler]:
    scheduler = EdfScheduler(1, urgent_slots=0)
    yield scheduler
    scheduler.shutdown()


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (bounded)."""
    end = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.001)


class Holder:
    """A call that occupies a worker until ``gate`` is set."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.started = threading.Event()
        self.finished = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        try:
            assert self.gate.wait(TIMEOUT)
            return "held"
        finally:
            self.finished.set()


def recorder(order: list[str], label: str) -> Callable[[], str]:
    def fn() -> str:
        order.append(label)
        return label

    return fn


async def hold(sched: EdfScheduler, gate: threading.Event) -> tuple[asyncio.Task[str], Holder]:
    holder = Holder(gate)
    task = asyncio.create_task(sched.run(0.0, holder))
    await until(holder.started.is_set)
    return task, holder


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError):
        EdfScheduler(0)


async def test_run_returns_the_result(sched: EdfScheduler) -> None:
    assert await sched.run(1.0, lambda: 42) == 42
    assert sched.busy == 0
    assert sched.queued == 0


async def test_waiting_calls_run_in_deadline_order(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    holder_task, _ = await hold(sched, gate)
    order: list[str] = []
    deadlines = {"e": 5.0, "a": 1.0, "c": 3.0, "b": 2.0, "d": 4.0, "z": -1.0}
    tasks = [
        asyncio.create_task(sched.run(deadline, recorder(order, label)))
        for label, deadline in deadlines.items()
    ]
    await until(lambda: sched.queued == len(deadlines))
    assert sched.busy == 1
    gate.set()
    results = await asyncio.gather(holder_task, *tasks)
    assert results == ["held", *deadlines]
    assert order == ["z", "a", "b", "c", "d", "e"]
    assert (sched.busy, sched.queued) == (0, 0)


async def test_equal_deadlines_run_in_arrival_order(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    holder_task, _ = await hold(sched, gate)
    order: list[str] = []
    calls = [("first", 1.0), ("second", 1.0), ("urgent", 0.5), ("third", 1.0), ("late", 2.0)]
    tasks: list[asyncio.Task[str]] = []
    for label, deadline in calls:
        tasks.append(asyncio.create_task(sched.run(deadline, recorder(order, label))))
        await until(lambda: sched.queued == len(tasks))  # arrival order is creation order
    gate.set()
    await asyncio.gather(holder_task, *tasks)
    assert order == ["urgent", "first", "second", "third", "late"]


async def test_cancelled_waiter_gives_up_its_place(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    holder_task, _ = await hold(sched, gate)
    order: list[str] = []
    cancelled = asyncio.create_task(sched.run(1.0, recorder(order, "cancelled")))
    waiting = asyncio.create_task(sched.run(2.0, recorder(order, "waiting")))
    await until(lambda: sched.queued == 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert sched.queued == 1
    gate.set()
    assert await holder_task == "held"
    assert await waiting == "waiting"
    assert order == ["waiting"]  # the cancelled call never ran
    # no slot leaked: everything is free and new calls run at once
    assert (sched.busy, sched.queued) == (0, 0)
    assert await asyncio.wait_for(sched.run(9.0, lambda: "next"), TIMEOUT) == "next"
    assert (sched.busy, sched.queued) == (0, 0)


async def test_cancelling_every_waiter_leaks_no_slot(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    holder_task, _ = await hold(sched, gate)
    waiters = [asyncio.create_task(sched.run(float(i), lambda: None)) for i in range(5)]
    await until(lambda: sched.queued == 5)
    for task in waiters[::2]:
        task.cancel()
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(holder_task, *waiters, return_exceptions=True)
    assert results[0] == "held"
    assert [isinstance(r, asyncio.CancelledError) for r in results[1:]] == [
        True,
        False,
        True,
        False,
        True,
    ]
    assert (sched.busy, sched.queued) == (0, 0)
    assert await asyncio.wait_for(sched.run(0.0, lambda: 7), TIMEOUT) == 7


async def test_cancelling_the_running_call_and_a_waiter_together(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    # e.g. a TaskGroup or a shutdown cancelling several sessions' tasks at once
    holder_task, _ = await hold(sched, gate)
    waiter = asyncio.create_task(sched.run(1.0, lambda: "waiter"))
    await until(lambda: sched.queued == 1)
    holder_task.cancel()
    waiter.cancel()
    results = await asyncio.gather(holder_task, waiter, return_exceptions=True)
    gate.set()
    assert [type(r) for r in results] == [asyncio.CancelledError, asyncio.CancelledError]
    assert sched.queued == 0


async def test_cancelled_running_call_keeps_its_slot_until_fn_returns(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    holder_task, holder = await hold(sched, gate)
    holder_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder_task
    assert not holder.finished.is_set()  # fn runs on in its thread
    order: list[str] = []
    late = asyncio.create_task(sched.run(5.0, recorder(order, "late")))
    await asyncio.sleep(0.02)
    urgent = asyncio.create_task(sched.run(1.0, recorder(order, "urgent")))
    await asyncio.sleep(0.02)
    gate.set()
    await asyncio.gather(late, urgent)
    assert order == ["urgent", "late"]


async def test_exception_propagates_and_releases_the_slot(
    sched: EdfScheduler, gate: threading.Event
) -> None:
    def boom() -> None:
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        await sched.run(0.0, boom)
    assert (sched.busy, sched.queued) == (0, 0)

    # a failing call that others wait behind hands its slot on
    holder_task, _ = await hold(sched, gate)
    failing = asyncio.create_task(sched.run(1.0, boom))
    after = asyncio.create_task(sched.run(2.0, lambda: "after"))
    await until(lambda: sched.queued == 2)
    gate.set()
    assert await holder_task == "held"
    with pytest.raises(RuntimeError):
        await failing
    assert await after == "after"
    assert (sched.busy, sched.queued) == (0, 0)


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_concurrency_never_exceeds_workers(workers: int) -> None:
    sched = EdfScheduler(workers, urgent_slots=0)
    lock = threading.Lock()
    running = 0
    peak = 0

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    try:
        await asyncio.gather(*(sched.run(float(i % 4), work) for i in range(4 * workers)))
    finally:
        sched.shutdown()
    assert peak == workers  # all workers used, never more
    assert (sched.busy, sched.queued) == (0, 0)


async def test_deadline_order_with_two_workers(gate: threading.Event) -> None:
    sched = EdfScheduler(2, urgent_slots=0)
    try:
        first, _ = await hold(sched, gate)
        second, _ = await hold(sched, gate)
        assert sched.busy == 2
        order: list[str] = []
        tasks = [
            asyncio.create_task(sched.run(d, recorder(order, str(d)))) for d in (3.0, 1.0, 2.0)
        ]
        await until(lambda: sched.queued == 3)
        gate.set()
        await asyncio.gather(first, second, *tasks)
    finally:
        sched.shutdown()
    # two may run at once, but they start in deadline order: 1.0 is never after 3.0
    assert order.index("1.0") < order.index("3.0")
    assert order.index("2.0") < order.index("3.0") or len(order) == 3
    assert sorted(order) == ["1.0", "2.0", "3.0"]


# ------------------------------------------------------------------ urgent slot
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_due_call_takes_the_urgent_slot_while_workers_are_busy(gate: threading.Event) -> None:
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15, clock=clock)
    try:
        holder = Holder(gate)
        held = asyncio.create_task(s.run(clock.now + 10, holder))
        await until(holder.started.is_set)
        order: list[str] = []
        # A call with seconds of slack waits; a due one runs at once on the urgent slot.
        relaxed = asyncio.create_task(s.run(clock.now + 5.0, recorder(order, "relaxed")))
        due = asyncio.create_task(s.run(clock.now + 0.05, recorder(order, "due")))
        assert await asyncio.wait_for(due, TIMEOUT) == "due"
        assert order == ["due"] and not relaxed.done() and s.queued == 1
        gate.set()
        assert await asyncio.wait_for(relaxed, TIMEOUT) == "relaxed"
        assert await held == "held"
        assert s.busy == 0
    finally:
        s.shutdown()


async def test_urgent_slot_is_never_used_by_calls_with_slack(gate: threading.Event) -> None:
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15, clock=clock)
    try:
        holder = Holder(gate)
        held = asyncio.create_task(s.run(clock.now, holder))
        await until(holder.started.is_set)
        waiting = asyncio.create_task(s.run(clock.now + 3.0, recorder([], "later")))
        await asyncio.sleep(0.05)
        assert not waiting.done() and s.busy == 1
        gate.set()
        assert await asyncio.wait_for(waiting, TIMEOUT) == "later"
        await held
    finally:
        s.shutdown()


async def test_waiter_that_falls_due_is_promoted_to_the_urgent_slot(gate: threading.Event) -> None:
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15)  # real clock: waits 0.1 s
    try:
        holder = Holder(gate)
        held = asyncio.create_task(s.run(time.monotonic(), holder))
        await until(holder.started.is_set)
        waiting = asyncio.create_task(s.run(time.monotonic() + 0.25, recorder([], "promoted")))
        assert await asyncio.wait_for(waiting, TIMEOUT) == "promoted"
        assert not holder.finished.is_set()  # it ran while the normal worker was still held
        gate.set()
        await held
    finally:
        s.shutdown()


async def test_a_first_call_takes_the_urgent_slot_whatever_its_deadline(
    gate: threading.Event,
) -> None:
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15, clock=clock)
    try:
        holder = Holder(gate)
        held = asyncio.create_task(s.run(clock.now, holder))
        await until(holder.started.is_set)
        first = asyncio.create_task(s.run(clock.now + 5.0, recorder([], "first"), first=True))
        assert await asyncio.wait_for(first, TIMEOUT) == "first"
        assert not holder.finished.is_set()  # it did not wait for the normal worker
        gate.set()
        await held
    finally:
        s.shutdown()


async def occupy_worker_and_urgent_slot(
    s: EdfScheduler, clock: FakeClock, gates: list[threading.Event]
) -> tuple[list[Holder], list[asyncio.Task[str]]]:
    """Hold the one normal worker (``gates[0]``) and the urgent slot (``gates[1]``)."""
    holders = [Holder(g) for g in gates]
    held = [
        asyncio.create_task(s.run(clock.now, holders[0])),
        asyncio.create_task(s.run(clock.now, holders[1], first=True)),
    ]
    await until(lambda: all(h.started.is_set() for h in holders))
    return holders, held


async def test_in_a_burst_the_urgent_slot_serves_first_calls_and_the_worker_deadlines() -> None:
    # The urgent slot and the worker are busy; one listener waits for its first audio,
    # two already listening wait for their next chunk.
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15, clock=clock)
    gates = [threading.Event(), threading.Event()]
    try:
        _holders, held = await occupy_worker_and_urgent_slot(s, clock, gates)
        order: list[str] = []
        first = asyncio.create_task(s.run(clock.now + 0.5, recorder(order, "first"), first=True))
        soon = asyncio.create_task(s.run(clock.now + 0.3, recorder(order, "soon")))
        later = asyncio.create_task(s.run(clock.now + 0.9, recorder(order, "later")))
        await until(lambda: s.queued == 3)
        gates[1].set()  # the urgent slot frees: neither listening call is due, the first is
        await asyncio.wait_for(first, TIMEOUT)
        await asyncio.sleep(0.05)
        assert order == ["first"] and s.queued == 2  # the urgent slot stays free
        gates[0].set()  # the worker frees: the listening calls in deadline order
        await asyncio.wait_for(asyncio.gather(soon, later, *held), TIMEOUT)
        assert order == ["first", "soon", "later"]
    finally:
        for g in gates:
            g.set()
        s.shutdown()


async def test_an_urgent_slot_goes_to_a_due_listener_before_a_later_first_call() -> None:
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=1, urgent_within=0.15, clock=clock)
    gates = [threading.Event(), threading.Event()]
    try:
        holders, held = await occupy_worker_and_urgent_slot(s, clock, gates)
        order: list[str] = []
        first = asyncio.create_task(s.run(clock.now + 0.5, recorder(order, "first"), first=True))
        due = asyncio.create_task(s.run(clock.now + 0.1, recorder(order, "due")))
        await until(lambda: s.queued == 2)
        gates[1].set()  # the urgent slot frees: the due listener has the earlier deadline
        await asyncio.wait_for(asyncio.gather(due, first), TIMEOUT)
        assert order == ["due", "first"]
        assert not holders[0].finished.is_set()  # both ran on the urgent slot
        gates[0].set()
        await asyncio.wait_for(asyncio.gather(*held), TIMEOUT)
    finally:
        for g in gates:
            g.set()
        s.shutdown()


async def test_a_listener_about_to_run_out_goes_before_first_chunks_which_go_before_the_rest(
    gate: threading.Event,
) -> None:
    clock = FakeClock()
    s = EdfScheduler(1, urgent_slots=0, protect_within=0.5, clock=clock)
    try:
        holder = Holder(gate)
        held = asyncio.create_task(s.run(clock.now, holder))
        await until(holder.started.is_set)
        order: list[str] = []
        calls = [
            s.run(clock.now + 2.0, recorder(order, "relaxed")),
            s.run(clock.now - 0.1, recorder(order, "first, older"), first=True),
            s.run(clock.now + 0.7, recorder(order, "later")),
            s.run(clock.now, recorder(order, "first"), first=True),
            s.run(clock.now + 0.3, recorder(order, "soon")),
        ]
        tasks = [asyncio.create_task(c) for c in calls]
        await until(lambda: s.queued == 5)
        gate.set()
        await asyncio.wait_for(asyncio.gather(held, *tasks), TIMEOUT)
        # Due within 0.5 s: protected; then first chunks by arrival; then by deadline.
        assert order == ["soon", "first, older", "first", "later", "relaxed"]
    finally:
        s.shutdown()
