"""Tests for engine.chunking: decode plans tile the latent and keep only exact frames."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chunking import ChunkSchedule, FlowProgress


@st.composite
def schedules(draw: st.DrawFn) -> ChunkSchedule:
    first = draw(st.integers(1, 64))
    return ChunkSchedule(
        first_frames=first,
        growth=draw(st.floats(1.0, 10.0)),
        max_frames=draw(st.integers(first, 512)),
        min_tail_frames=draw(st.integers(0, 64)),
        vocoder_context=draw(st.integers(0, 40)),
        flow_context=draw(st.integers(0, 80)),
    )


@settings(max_examples=400, deadline=None)
@given(schedule=schedules(), total=st.integers(0, 5000))
def test_chunks_tile_the_sequence(schedule: ChunkSchedule, total: int) -> None:
    chunks = schedule.chunks(total)
    assert [s for s, _ in chunks] == [0, *(e for _, e in chunks[:-1])][: len(chunks)]
    assert (chunks[-1][1] if chunks else 0) == total
    assert all(s < e for s, e in chunks)

    sizes = [e - s for s, e in chunks]
    if total >= schedule.first_frames + schedule.min_tail_frames:
        assert sizes[0] == schedule.first_frames
    # Every chunk but the last follows the growth rule exactly.
    expected = float(schedule.first_frames)
    for size in sizes[:-1]:
        assert size == int(expected) <= schedule.max_frames
        expected = min(float(schedule.max_frames), expected * schedule.growth)
    # The last chunk is the planned size, cut by the end, or grown by a merged tail.
    if sizes:
        assert sizes[-1] <= int(expected) + max(0, schedule.min_tail_frames - 1)
    if len(sizes) > 1:  # a tail too short to stand alone was merged
        assert sizes[-1] >= schedule.min_tail_frames
    assert sizes[:-1] == sorted(sizes[:-1])


def test_default_schedule_is_small_first_then_large() -> None:
    plan = ChunkSchedule()
    assert plan.chunks(24 + 48 + 96 + 192 + 256 + 256 + 40) == [
        (0, 24),
        (24, 72),
        (72, 168),
        (168, 360),
        (360, 616),
        (616, 872),
        (872, 912),
    ]
    assert plan.chunks(50) == [(0, 50)]  # 24 + a 26-frame tail: merged
    assert plan.chunks(56) == [(0, 24), (24, 56)]
    assert plan.chunks(100) == [(0, 24), (24, 100)]  # 24 + 48 + a 28-frame tail: merged
    assert plan.chunks(0) == []


@settings(max_examples=300, deadline=None)
@given(schedule=schedules(), total=st.integers(1, 3000), data=st.data())
def test_vocoder_window_bounds(schedule: ChunkSchedule, total: int, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, total - 1))
    end = data.draw(st.integers(start + 1, total))
    lo, hi = schedule.vocoder_window(start, end, total)
    ctx = schedule.vocoder_context
    assert 0 <= lo <= start < end <= hi <= total
    assert start - lo == min(ctx, start)
    assert hi - end == min(ctx, total - end)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first_frames": 0},
        {"first_frames": 20, "max_frames": 10},
        {"growth": 0.5},
        {"vocoder_context": -1},
        {"flow_context": -1},
        {"min_tail_frames": -1},
    ],
)
def test_schedule_rejects_invalid_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ChunkSchedule(**kwargs)  # type: ignore[arg-type]


def _run_plan(progress: FlowProgress, needs: list[int]) -> list[tuple[int, int, int, int]]:
    runs: list[tuple[int, int, int, int]] = []
    for needed in needs:
        runs.extend(progress.windows_until(needed))
        assert progress.done >= min(needed, progress.total)
    return runs


@settings(max_examples=400, deadline=None)
@given(
    total=st.integers(1, 2000),
    context=st.integers(0, 80),
    min_frames=st.integers(0, 300),
    steps=st.lists(st.integers(1, 400), min_size=1, max_size=30),
)
def test_flow_windows_keep_each_exact_frame_once(
    total: int, context: int, min_frames: int, steps: list[int]
) -> None:
    needs = [*itertools.accumulate(steps), total]
    progress = FlowProgress(total, context, min_frames)
    runs = _run_plan(progress, needs)

    assert progress.done == total
    kept = [(keep_from, keep_to) for _, _, keep_from, keep_to in runs]
    assert kept[0][0] == 0
    assert all(a_to == b_from for (_, a_to), (b_from, _) in itertools.pairwise(kept))
    assert kept[-1][1] == total
    for lo, hi, keep_from, keep_to in runs:
        assert 0 <= lo <= keep_from < keep_to <= hi <= total
        # Exact region: context frames of real input on each side, or the sequence edge.
        assert keep_from >= lo + context or lo == 0
        assert keep_to <= hi - context or hi == total
    # The first run is on the path to the first audio: it computes no more than needed.
    first_needed = min(needs[0], total)
    assert runs[0][1] == min(total, first_needed + context)


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(1, 400),
    radius=st.integers(0, 12),
    extra_context=st.integers(0, 6),
    min_frames=st.integers(0, 100),
    steps=st.lists(st.integers(1, 120), min_size=1, max_size=10),
    seed=st.integers(0, 2**32 - 1),
)
def test_flow_windows_reproduce_a_finite_receptive_field_exactly(
    total: int, radius: int, extra_context: int, min_frames: int, steps: list[int], seed: int
) -> None:
    """A zero-padded 'same' convolution, run window by window, equals the one-shot run."""
    rng = np.random.default_rng(seed)
    signal = rng.integers(-1000, 1000, size=total)
    kernel = rng.integers(-5, 6, size=2 * radius + 1)

    def conv(x: np.ndarray) -> np.ndarray:
        return np.convolve(np.pad(x, radius), kernel, mode="valid")

    whole = conv(signal)
    out = np.full(total, np.iinfo(np.int64).min, dtype=np.int64)
    progress = FlowProgress(total, radius + extra_context, min_frames)
    needs = [*itertools.accumulate(steps), total]
    for lo, hi, keep_from, keep_to in _run_plan(progress, needs):
        assert np.all(out[keep_from:keep_to] == np.iinfo(np.int64).min)  # never twice
        out[keep_from:keep_to] = conv(signal[lo:hi])[keep_from - lo : keep_to - lo]
    np.testing.assert_array_equal(out, whole)


def test_flow_windows_need_nothing_more_when_done() -> None:
    progress = FlowProgress(total=100, context=10, min_frames=50)
    assert list(progress.windows_until(30)) == [(0, 40, 0, 30)]
    assert list(progress.windows_until(30)) == []
    assert list(progress.windows_until(20)) == []
    # Later runs look ahead by min_frames.
    assert list(progress.windows_until(31)) == [(20, 90, 30, 80)]
    assert list(progress.windows_until(1000)) == [(70, 100, 80, 100)]
