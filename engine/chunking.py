"""Chunk plans for decoding a latent sequence in windows (pure logic, no I/O).

Units are latent *frames* (one frame = ``hop`` output samples, 256 for Piper,
about 11.6 ms at 22050 Hz). A plan says which frames each output chunk covers
and which input window must be decoded to produce those frames exactly.

Why these defaults (measured on en_US-joe-medium; see docs/engine.md): the
HiFi-GAN vocoder's output is exact (max abs diff ~4e-6) from 10 frames of
context each side, so 12 is used; the flow is exact from 28-32 frames, so 32
is used. Each vocoder call costs ~1.5 ms + 0.33 ms per frame, each flow call
~7 ms + 0.065 ms per frame (two threads). The first chunk is 24 frames (279 ms
of audio): its call (frontend included) takes ~61 ms on one idle thread. The
second chunk must be computed while the first one plays, and it is the call
most likely to be late: under load it waits for a worker and shares the cores,
and a resampler holds back up to ~50 ms of the first chunk. At 16 frames (186
ms, 6 ms sooner) the soak at 80 % load saw its only underruns exactly there.
Each later chunk is 2x the one before (48, 96, 192), so the second costs ~62
ms of compute, and the cap of 256 frames keeps any one call under ~100-170 ms
so a new session's first chunk never waits long for a worker. A tail shorter
than 32 frames joins the chunk before it. The flow runs ahead at least
``flow_ahead_frames`` per call after the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkSchedule:
    """How to cut ``total`` frames into decode chunks.

    ``first_frames`` is the size of the first chunk, each later chunk is
    ``growth`` times the previous one, capped at ``max_frames``. A trailing
    chunk shorter than ``min_tail_frames`` is merged into the one before it
    (a tiny last chunk would pay full context cost for little audio).
    """

    first_frames: int = 24
    growth: float = 2.0
    max_frames: int = 256
    min_tail_frames: int = 32
    vocoder_context: int = 12
    flow_context: int = 32
    flow_ahead_frames: int = 128

    def __post_init__(self) -> None:
        if self.first_frames < 1 or self.max_frames < self.first_frames:
            raise ValueError("need 1 <= first_frames <= max_frames")
        if self.growth < 1.0:
            raise ValueError("growth must be >= 1")
        if self.vocoder_context < 0 or self.flow_context < 0 or self.min_tail_frames < 0:
            raise ValueError("contexts and min_tail_frames must be >= 0")

    def chunks(self, total: int) -> list[tuple[int, int]]:
        """Half-open ``[start, end)`` frame ranges that tile ``[0, total)`` in order."""
        bounds: list[tuple[int, int]] = []
        start, size = 0, float(self.first_frames)
        while start < total:
            end = min(total, start + int(size))
            if total - end < self.min_tail_frames:
                end = total
            bounds.append((start, end))
            start = end
            size = min(float(self.max_frames), size * self.growth)
        return bounds

    def vocoder_window(self, start: int, end: int, total: int) -> tuple[int, int]:
        """Input frames the vocoder needs so that output ``[start, end)`` is exact."""
        return max(0, start - self.vocoder_context), min(total, end + self.vocoder_context)


@dataclass
class FlowProgress:
    """Tracks how far the flow output is exact, and plans the next flow window.

    The flow output for input window ``[lo, hi)`` is exact on
    ``[lo + ctx, hi - ctx)``, except that a window touching the start (``lo ==
    0``) or the end (``hi == total``) of the sequence is exact up to that edge.
    Windows are planned so that every frame is computed exactly once in the
    exact region, in order. The first window covers only what is needed (it is
    on the path to the first audio); later ones cover at least ``min_frames``.
    """

    total: int
    context: int
    min_frames: int
    done: int = 0

    def windows_until(self, needed: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(lo, hi, keep_from, keep_to)`` flow runs until ``done >= needed``.

        Run the flow on input ``[lo, hi)`` and keep output frames
        ``[keep_from, keep_to)`` (absolute indices). ``done`` advances as each
        tuple is yielded.
        """
        needed = min(needed, self.total)
        while self.done < needed:
            ahead = self.min_frames if self.done else 0
            target = min(self.total, max(needed, self.done + ahead))
            lo = max(0, self.done - self.context)
            hi = min(self.total, target + self.context)
            keep_to = self.total if hi == self.total else hi - self.context
            keep_from = self.done
            self.done = keep_to
            yield lo, hi, keep_from, keep_to
