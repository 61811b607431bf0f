"""When and how long the client waits before trying to connect again."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

# Closes after which a new connection may succeed: going away (1001), abnormal (1006),
# server error (1011), restart (1012), try again later (1013), bad gateway (1014).
RETRYABLE_CLOSE_CODES: Final = frozenset({1001, 1006, 1011, 1012, 1013, 1014})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": attempt ``n`` waits in [d/2, d], d = base*2^n."""

    max_retries: int = 5
    base_s: float = 0.25
    max_s: float = 5.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        cap: float = min(self.max_s, self.base_s * 2.0**attempt)
        return cap / 2 + rng.uniform(0.0, cap / 2)
