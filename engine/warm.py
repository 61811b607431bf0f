"""Warming a voice's working memory for calls that run at the same time.

onnxruntime's CPU arena (one per session) grows to the largest total of
tensors alive at one moment, and calls running at the same time each hold
their own. Warmed with a single call, the arena is sized for one; the first
time the server runs several wide windows at once it grows again, in
power-of-two regions, at random moments minutes into serving (seen: +35 MB in
one step during a test). Warming with exactly as many copies as workers is
not enough either: where the arena settles depends on how the copies'
allocations interleave, and measured over 10 rounds of 4 copies it kept
stepping up (405 -> 435 -> 455 MB, a step as late as round 6). A little more
than the workers, twice, reaches a size that 30 further rounds of 4 did not
move (+1 MB): :data:`SPARE_COPIES` and :data:`ROUNDS` below, measured with
the default voice, 2 + 2 workers: ready at 540-575 MB after 1.5 s of warming.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

Sync = Callable[[], None]
SPARE_COPIES = 2  # copies beyond the caller's concurrency
ROUNDS = 2


def copies_for(concurrency: int) -> int:
    """How many copies warm a voice for ``concurrency`` calls at once (1 needs no extra)."""
    return 1 if concurrency <= 1 else concurrency + SPARE_COPIES


def run_together(task: Callable[[Sync], None], copies: int) -> None:
    """Call ``task(sync)`` ``copies`` times at once, each on its own thread.

    ``sync()`` returns once every copy has called it: a task calls it before
    each stage, so that the copies run the stage side by side (on fewer cores
    than copies, one copy can otherwise finish a stage before another starts
    it, and their memory is never held at the same time). Every copy must call
    it the same number of times. Returns when every call has returned; the
    exception of a copy that failed is re-raised (the others' ``sync`` then
    raises ``threading.BrokenBarrierError`` instead of waiting). ``copies``
    < 1 raises ``ValueError``; 1 calls ``task`` on the caller's thread.
    """
    if copies < 1:
        raise ValueError("copies must be >= 1")
    if copies == 1:
        task(lambda: None)
        return
    barrier = threading.Barrier(copies, timeout=60)

    def sync() -> None:
        barrier.wait()

    def copy() -> None:
        try:
            task(sync)
        except BaseException:
            barrier.abort()  # the others stop waiting for this one
            raise

    with ThreadPoolExecutor(copies, thread_name_prefix="warm") as pool:
        futures = [pool.submit(copy) for _ in range(copies)]
    errors = [e for e in (f.exception() for f in futures) if e is not None]
    # The copy that failed, not the others it released from their barrier.
    for error in sorted(errors, key=lambda e: isinstance(e, threading.BrokenBarrierError)):
        raise error
