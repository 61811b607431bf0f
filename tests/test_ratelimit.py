"""Tests for service.ratelimit: a pure token bucket."""

from __future__ import annotations

import pytest

from service.ratelimit import TokenBucket


def takes(bucket: TokenBucket, count: int, now: float) -> list[bool]:
    return [bucket.take(now) for _ in range(count)]


def test_starts_full_allows_burst_then_refuses() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert takes(bucket, 5, now=100.0) == [True] * 5
    assert bucket.take(100.0) is False
    assert bucket.take(100.0) is False


def test_refills_at_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=5.0)
    takes(bucket, 5, now=0.0)
    assert bucket.take(0.125) is False  # half a token
    assert bucket.take(0.25) is True  # 0.25 s at 4/s is one token
    assert bucket.take(0.25) is False
    assert takes(bucket, 4, now=1.0) == [True, True, True, False]  # 0.75 s: three more


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0)
    takes(bucket, 3, now=0.0)
    # an hour idle still only buys one burst
    assert takes(bucket, 4, now=3600.0) == [True, True, True, False]


def test_refused_takes_do_not_spend() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(0.0) is True
    assert takes(bucket, 10, now=0.5) == [False] * 10
    assert bucket.take(1.0) is True  # the refusals did not push the refill back


@pytest.mark.parametrize(("rate", "seconds"), [(200.0, 10.0), (5.0, 60.0), (0.5, 100.0)])
def test_sustained_rate_is_rate_plus_burst(rate: float, seconds: float) -> None:
    bucket = TokenBucket(rate=rate, burst=2 * rate)
    step = 1 / (4 * rate)  # try four times faster than allowed
    allowed = sum(bucket.take(i * step) for i in range(int(seconds / step) + 1))
    assert allowed == pytest.approx(2 * rate + rate * seconds, abs=1.0)


def test_fractional_burst_below_one_never_allows() -> None:
    bucket = TokenBucket(rate=0.0, burst=0.5)
    assert takes(bucket, 3, now=0.0) == [False] * 3
