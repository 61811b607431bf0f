"""Tests for engine.framer: exact, chunk-invariant framing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.framer import Framer, frame_samples_for


def _signal(length: int) -> np.ndarray:
    # Distinct values so any reordering, loss or duplication shows.
    return np.arange(length, dtype=np.float32)


@given(
    frame_samples=st.integers(min_value=1, max_value=50),
    chunk_sizes=st.lists(st.integers(min_value=0, max_value=120), max_size=30),
)
def test_output_does_not_depend_on_chunking(frame_samples: int, chunk_sizes: list[int]) -> None:
    signal = _signal(sum(chunk_sizes))
    framer = Framer(frame_samples)
    frames: list[np.ndarray] = []
    start = 0
    for size in chunk_sizes:
        frames.extend(framer.push(signal[start : start + size]))
        start += size
        assert framer.pending_samples == start % frame_samples
        assert framer.pending_samples < frame_samples
    tail = framer.flush()

    assert all(frame.shape == (frame_samples,) for frame in frames)
    assert all(frame.dtype == np.float32 for frame in frames)
    assert len(frames) == len(signal) // frame_samples
    if tail is None:
        assert len(signal) % frame_samples == 0
    else:
        assert 0 < tail.shape[0] < frame_samples
        frames.append(tail)
    joined = np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)
    np.testing.assert_array_equal(joined, signal)
    assert framer.pending_samples == 0
    assert framer.flush() is None


def test_flush_of_empty_framer_is_none() -> None:
    assert Framer(160).flush() is None


def test_reset_drops_remainder() -> None:
    framer = Framer(4)
    assert framer.push(_signal(6))[0].tolist() == [0, 1, 2, 3]
    assert framer.pending_samples == 2
    framer.reset()
    assert framer.pending_samples == 0
    assert framer.flush() is None
    assert framer.push(np.full(4, 9.0, dtype=np.float32))[0].tolist() == [9, 9, 9, 9]


def test_frames_do_not_alias_caller_buffer() -> None:
    framer = Framer(4)
    buffer = _signal(8)
    frames = framer.push(buffer)
    buffer[:] = -1.0
    assert np.concatenate(frames).tolist() == list(range(8))


def test_push_converts_to_float32() -> None:
    frames = Framer(2).push(np.array([0.5, -0.5], dtype=np.float64))
    assert frames[0].dtype == np.float32


def test_push_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="1-D"):
        Framer(4).push(np.zeros((4, 2), dtype=np.float32))


def test_rejects_empty_frames() -> None:
    with pytest.raises(ValueError):
        Framer(0)


@pytest.mark.parametrize(
    ("rate", "ms", "expected"),
    [(8000, 20, 160), (22050, 20, 441), (22050, 10, 220), (48000, 2.5, 120), (8000, 0.01, 1)],
)
def test_frame_samples_for(rate: int, ms: float, expected: int) -> None:
    assert frame_samples_for(rate, ms) == expected


@pytest.mark.parametrize(("rate", "ms"), [(8000, 0), (8000, -5), (0, 20)])
def test_frame_samples_for_rejects_bad_input(rate: int, ms: float) -> None:
    with pytest.raises(ValueError):
        frame_samples_for(rate, ms)
