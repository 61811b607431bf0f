"""What a simulated listener measures: a real-time playback clock, per-session tallies, percentiles.

Pure bookkeeping, no I/O and no clock of its own: callers pass arrival times in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class PlaybackClock:
    """A listener playing one utterance's frames back to back from the first frame's arrival.

    :meth:`arrive` takes each frame's arrival time (seconds) and duration
    (ms). Playback starts ``playout_ms`` after the first frame arrives (a
    jitter buffer; 0: at once). A frame arriving after the previous audio has
    played out is an underrun; playback stalls until it arrives and goes on
    from there.
    """

    playout_ms: float = 0.0
    started_at: float | None = None
    plays_until: float = 0.0  # when the audio received so far has played out
    underruns: int = 0
    underrun_ms: float = 0.0

    def arrive(self, now: float, duration_ms: float) -> None:
        if self.started_at is None:
            self.started_at = now
            self.plays_until = now + self.playout_ms / 1000.0
        elif now > self.plays_until + 1e-6:  # (float sums of durations drift by far less)
            self.underruns += 1
            self.underrun_ms += 1000.0 * (now - self.plays_until)
            self.plays_until = now
        self.plays_until += duration_ms / 1000.0


@dataclass
class SessionResult:
    """What one simulated listener saw; times in milliseconds."""

    session: int
    utterances: int = 0  # started
    completed: int = 0  # ended with done
    ttft_ms: list[float] = field(default_factory=list)
    server_ttft_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    underrun_ms: float = 0.0
    audio_s: float = 0.0
    errors: int = 0
    error_codes: list[str] = field(default_factory=list)

    def error(self, code: str) -> None:
        self.errors += 1
        self.error_codes.append(code)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 (linear interpolation), mean and max of ``values``; ``None`` when empty."""
    ordered = sorted(values)

    def at(q: float) -> float | None:
        if not ordered:
            return None
        rank = q * (len(ordered) - 1)
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "mean": round(sum(ordered) / len(ordered), 1) if ordered else None,
        "max": round(ordered[-1], 1) if ordered else None,
    }
