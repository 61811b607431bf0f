"""Tests for engine.resample: stateful, chunk-invariant, click-free resampling."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.resample import StreamingResampler

OUTPUT_RATES = [8000, 16000, 24000, 44100, 48000]


def _noise(length: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(length) * 0.3).astype(np.float32)


def _split(signal: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Cut ``signal`` into pieces of ``sizes`` (cycled), covering it exactly."""
    pieces, start, index = [], 0, 0
    while start < len(signal):
        size = sizes[index % len(sizes)]
        pieces.append(signal[start : start + size])
        start += size
        index += 1
    return pieces


def _run(resampler: StreamingResampler, pieces: list[np.ndarray]) -> np.ndarray:
    outputs = [resampler.process(piece) for piece in pieces]
    outputs.append(resampler.flush())
    return np.concatenate(outputs)


@settings(max_examples=60, deadline=None)
@given(
    in_rate=st.sampled_from([16000, 22050, 24000]),
    out_rate=st.sampled_from(OUTPUT_RATES),
    sizes=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=12).filter(any),
)
def test_chunked_output_is_bit_identical_to_one_shot(
    in_rate: int, out_rate: int, sizes: list[int]
) -> None:
    signal = _noise(3000)
    one_shot = StreamingResampler(in_rate, out_rate).process(signal, last=True)
    chunked = _run(StreamingResampler(in_rate, out_rate), _split(signal, sizes))
    # libsoxr buffers internally, so chunking changes nothing, not even rounding.
    np.testing.assert_array_equal(chunked, one_shot)


@pytest.mark.parametrize("out_rate", [8000, 16000, 24000, 48000])
def test_no_clicks_at_chunk_seams(out_rate: int) -> None:
    in_rate, frequency, amplitude = 22050, 440.0, 0.8
    sine = (amplitude * np.sin(2 * np.pi * frequency * np.arange(in_rate) / in_rate)).astype(
        np.float32
    )
    sizes = np.random.default_rng(out_rate).integers(1, 900, size=64).tolist()
    pieces = _split(sine, sizes)
    reference = amplitude * np.sin(2 * np.pi * frequency * np.arange(out_rate) / out_rate)
    largest_true_jump = np.abs(np.diff(reference)).max()

    def largest_interior_jump(output: np.ndarray) -> float:
        # The abrupt start and end of the test tone ring through the filter;
        # the seams under test are all in the interior.
        return float(np.abs(np.diff(output[64:-64])).max())

    streamed = _run(StreamingResampler(in_rate, out_rate), pieces)
    assert largest_interior_jump(streamed) <= largest_true_jump * 1.01

    # The check has teeth: resampling each chunk on its own clicks at every seam.
    naive = np.concatenate([soxr.resample(piece, in_rate, out_rate) for piece in pieces])
    assert largest_interior_jump(naive) > largest_true_jump * 1.5


@pytest.mark.parametrize("in_rate", [16000, 22050, 24000, 44100])
@pytest.mark.parametrize("out_rate", OUTPUT_RATES)
@pytest.mark.parametrize("length", [1, 37, 1000, 22050])
def test_total_length_after_flush(in_rate: int, out_rate: int, length: int) -> None:
    pieces = _split(_noise(length), [313])
    output = _run(StreamingResampler(in_rate, out_rate), pieces)
    assert output.dtype == np.float32
    assert abs(len(output) - length * out_rate / in_rate) <= 2


def test_output_arrives_before_flush() -> None:
    resampler = StreamingResampler(22050, 16000)
    produced = sum(len(resampler.process(piece)) for piece in _split(_noise(22050), [1102]))
    assert produced > 15000  # only a small tail is held back for look-ahead


def test_passthrough_is_identity_without_copy() -> None:
    resampler = StreamingResampler(24000, 24000)
    assert resampler.is_passthrough
    signal = _noise(500)
    output = resampler.process(signal)
    assert output is signal
    assert resampler.flush().shape == (0,)


def test_passthrough_converts_dtype() -> None:
    signal = np.linspace(-1, 1, 11)
    output = StreamingResampler(16000, 16000).process(signal, last=True)  # type: ignore[arg-type]
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, signal.astype(np.float32))


def test_a_new_stream_starts_after_last_chunk() -> None:
    signal = _noise(2000)
    resampler = StreamingResampler(22050, 8000)
    first = _run(resampler, _split(signal, [500]))
    second = _run(resampler, _split(signal, [300]))
    np.testing.assert_array_equal(first, second)


def test_reset_discards_held_state() -> None:
    signal = _noise(2000)
    resampler = StreamingResampler(22050, 48000)
    resampler.process(_noise(1234, seed=9))
    resampler.reset()
    fresh = StreamingResampler(22050, 48000).process(signal, last=True)
    np.testing.assert_array_equal(resampler.process(signal, last=True), fresh)


def test_accepts_non_contiguous_and_float64_input() -> None:
    signal = _noise(4000).astype(np.float64)
    # float64 on purpose: the annotation states the convention, the code converts.
    expected = StreamingResampler(22050, 16000).process(signal[::2].copy(), last=True)  # type: ignore[arg-type]
    output = StreamingResampler(22050, 16000).process(signal[::2], last=True)  # type: ignore[arg-type]
    np.testing.assert_array_equal(output, expected)


@pytest.mark.parametrize(("in_rate", "out_rate"), [(0, 16000), (22050, 7999), (22050, 48001)])
def test_rejects_bad_rates(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError):
        StreamingResampler(in_rate, out_rate)


def test_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="1-D"):
        StreamingResampler(22050, 16000).process(np.zeros((10, 2), dtype=np.float32))
