"""Tests for engine.output: whole frames, chunk-invariant bytes, padded segment ends."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.audio import ENCODINGS, AudioEncoding, AudioFrame, bytes_per_sample
from engine.codecs import decode, encode_frame
from engine.output import OutputStream, faded
from engine.resample import StreamingResampler

IN_RATES = [16000, 22050, 24000]


def _noise(length: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(length) * 0.25).astype(np.float32)


def _pieces(signal: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``signal`` cut into pieces of ``sizes`` (cycled, zeros allowed), covering it exactly."""
    if not any(sizes):
        return [signal[:0], signal]
    pieces: list[np.ndarray] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(signal):
            break
        pieces.append(signal[start : start + size])
        start += size
    return pieces


def _segment(stream: OutputStream, pieces: list[np.ndarray]) -> list[AudioFrame]:
    frames = [f for piece in pieces for f in stream.push(piece)]
    return frames + stream.end_segment()


def _assert_whole_frames(frames: list[AudioFrame], stream: OutputStream) -> None:
    size = stream.frame_samples
    for frame in frames:
        assert frame.samples == size
        assert frame.sample_rate == stream.out_rate
        assert frame.encoding == stream.encoding
        assert len(frame.data) == size * bytes_per_sample(stream.encoding)


@settings(max_examples=150, deadline=None)
@given(
    in_rate=st.sampled_from(IN_RATES),
    out_rate=st.integers(8000, 48000),
    frame_ms=st.integers(10, 200),
    encoding=st.sampled_from(ENCODINGS),
    length=st.integers(0, 6000),
    sizes=st.lists(st.integers(0, 2000), max_size=8),
)
def test_every_frame_is_whole(
    in_rate: int,
    out_rate: int,
    frame_ms: int,
    encoding: AudioEncoding,
    length: int,
    sizes: list[int],
) -> None:
    stream = OutputStream(in_rate, out_rate, encoding, frame_ms)
    assert stream.frame_samples == round(frame_ms * out_rate / 1000)
    frames = _segment(stream, _pieces(_noise(length), sizes))
    frames += stream.silence(frame_ms * 1.5)
    frames += _segment(stream, _pieces(_noise(length // 2, seed=1), sizes))
    _assert_whole_frames(frames, stream)


@settings(max_examples=100, deadline=None)
@given(
    in_rate=st.sampled_from(IN_RATES),
    out_rate=st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
    frame_ms=st.integers(10, 200),
    encoding=st.sampled_from(ENCODINGS),
    length=st.integers(1, 8000),
    sizes_a=st.lists(st.integers(0, 3000), min_size=1, max_size=10),
    sizes_b=st.lists(st.integers(0, 3000), min_size=1, max_size=10),
)
def test_bytes_do_not_depend_on_chunking(
    in_rate: int,
    out_rate: int,
    frame_ms: int,
    encoding: AudioEncoding,
    length: int,
    sizes_a: list[int],
    sizes_b: list[int],
) -> None:
    first, second = _noise(length), _noise(length // 3 + 1, seed=7)

    def utterance(sizes: list[int]) -> bytes:
        stream = OutputStream(in_rate, out_rate, encoding, frame_ms)
        frames = _segment(stream, _pieces(first, sizes)) + _segment(stream, _pieces(second, sizes))
        return b"".join(f.data for f in frames)

    assert utterance(sizes_a) == utterance(sizes_b)
    assert utterance(sizes_a) == utterance([length])  # one push per segment


@pytest.mark.parametrize("in_rate", IN_RATES)
@pytest.mark.parametrize("out_rate", [8000, 22050, 48000])
@pytest.mark.parametrize("length", [1, 999, 22050])
def test_end_segment_pads_the_resampled_audio_to_whole_frames(
    in_rate: int, out_rate: int, length: int
) -> None:
    signal = _noise(length)
    stream = OutputStream(in_rate, out_rate, "pcm_f32le", 20)
    frames = _segment(stream, _pieces(signal, [317]))
    _assert_whole_frames(frames, stream)
    decoded = np.concatenate(
        [np.zeros(0, np.float32)] + [decode(f.data, "pcm_f32le") for f in frames]
    )
    expected = np.clip(StreamingResampler(in_rate, out_rate).process(signal, last=True), -1, 1)
    assert len(decoded) % stream.frame_samples == 0
    assert len(expected) <= len(decoded) < len(expected) + stream.frame_samples
    np.testing.assert_array_equal(decoded[: len(expected)], expected)
    assert not decoded[len(expected) :].any()  # the padding is silence


def test_end_segment_with_nothing_pending_adds_no_frame() -> None:
    stream = OutputStream(16000, 16000, "pcm_s16le", 10)  # 160-sample frames, no resampling
    assert len(stream.push(_noise(320))) == 2
    assert stream.end_segment() == []


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("out_rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("ms", [1.0, 20.0, 55.0, 200.0, 1234.0])
def test_silence_is_whole_frames(encoding: AudioEncoding, out_rate: int, ms: float) -> None:
    stream = OutputStream(22050, out_rate, encoding, 20)
    frames = stream.silence(ms)
    _assert_whole_frames(frames, stream)
    assert len(frames) == max(1, round(ms * out_rate / 1000 / stream.frame_samples))
    assert abs(len(frames) * 20 - ms) <= 10 or len(frames) == 1
    decoded = np.concatenate([decode(f.data, encoding) for f in frames])
    assert np.all(np.abs(decoded) <= 1e-3)  # G.711 A-law has no exact zero


def test_no_silence_for_zero_ms() -> None:
    assert OutputStream(22050, 16000, "pcm_s16le", 20).silence(0) == []


def test_silence_does_not_disturb_pending_audio() -> None:
    signal = _noise(5000)

    def run(with_silence: bool) -> bytes:
        stream = OutputStream(22050, 16000, "pcm_s16le", 20)
        frames = stream.push(signal[:2000])
        if with_silence:
            stream.silence(100)
        frames += stream.push(signal[2000:]) + stream.end_segment()
        return b"".join(f.data for f in frames)

    assert run(True) == run(False)


def test_reset_drops_buffered_audio() -> None:
    stream = OutputStream(22050, 24000, "pcm_s16le", 20)
    stream.push(_noise(1000, seed=3))
    stream.reset()
    fresh = OutputStream(22050, 24000, "pcm_s16le", 20)
    signal = _noise(4000)
    assert [f.data for f in _segment(stream, [signal])] == [
        f.data for f in _segment(fresh, [signal])
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("rate", [8000, 24000, 48000])
def test_faded_frame_ends_at_silence(encoding: AudioEncoding, rate: int) -> None:
    loud = np.full(rate // 50, 0.8, dtype=np.float32)
    frame = encode_frame(loud, rate, encoding)
    out = faded(frame)
    assert (out.samples, out.sample_rate, out.encoding) == (frame.samples, rate, encoding)
    samples = decode(out.data, encoding)
    original = decode(frame.data, encoding)
    assert abs(float(samples[-1])) <= 1e-3
    assert float(samples[0]) == pytest.approx(float(original[0]), abs=0.05)
    assert np.all(np.abs(samples) <= np.abs(original) + 0.03)
    assert np.all(np.diff(samples) <= 0.03)  # a ramp down, up to quantisation


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        OutputStream(22050, 7999, "pcm_s16le", 20)
    with pytest.raises(ValueError):
        OutputStream(22050, 16000, "pcm_s16le", 0)
    with pytest.raises(ValueError):
        OutputStream(22050, 16000, "pcm_s16le", 20).push(np.zeros((2, 2), np.float32))
