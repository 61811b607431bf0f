"""Tests for engine.audio: formats, frames and fades."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.audio import (
    ENCODINGS,
    AudioFrame,
    bytes_per_sample,
    fade_in,
    fade_out,
    ms_to_samples,
    silence,
)


def test_encodings_and_widths() -> None:
    assert ENCODINGS == ("pcm_s16le", "pcm_f32le", "mulaw", "alaw")
    assert [bytes_per_sample(e) for e in ENCODINGS] == [2, 4, 1, 1]


def test_bytes_per_sample_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown"):
        bytes_per_sample("opus")  # type: ignore[arg-type]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_frame_accepts_consistent_data(encoding: str) -> None:
    width = bytes_per_sample(encoding)  # type: ignore[arg-type]
    frame = AudioFrame(b"\x00" * 160 * width, 8000, encoding, 160)  # type: ignore[arg-type]
    assert frame.duration_ms == pytest.approx(20.0)


def test_frame_duration_is_exact_for_odd_rates() -> None:
    frame = AudioFrame(b"\x00" * 2 * 441, 22050, "pcm_s16le", 441)
    assert frame.duration_ms == pytest.approx(20.0)


def test_empty_frame_is_allowed() -> None:
    assert AudioFrame(b"", 16000, "mulaw", 0).duration_ms == 0.0


@pytest.mark.parametrize(
    ("data", "rate", "encoding", "samples", "message"),
    [
        (b"\x00" * 3, 16000, "pcm_s16le", 2, "need 4 bytes"),
        (b"\x00" * 4, 16000, "pcm_f32le", 4, "need 16 bytes"),
        (b"\x00" * 2, 16000, "mulaw", 1, "need 1 bytes"),
        (b"", 0, "pcm_s16le", 0, "sample_rate"),
        (b"", -8000, "alaw", 0, "sample_rate"),
        (b"", 8000, "alaw", -1, "non-negative"),
        (b"", 8000, "opus", 0, "unknown"),
    ],
)
def test_frame_rejects_inconsistent_fields(
    data: bytes, rate: int, encoding: str, samples: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AudioFrame(data, rate, encoding, samples)  # type: ignore[arg-type]


def test_frame_is_frozen() -> None:
    frame = AudioFrame(b"\x00\x00", 8000, "pcm_s16le", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.samples = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("ms", "rate", "expected"),
    [(0, 8000, 0), (20, 8000, 160), (20, 22050, 441), (10, 22050, 220), (0.01, 48000, 0)],
)
def test_ms_to_samples_rounds_to_nearest(ms: float, rate: int, expected: int) -> None:
    assert ms_to_samples(ms, rate) == expected


@pytest.mark.parametrize(("ms", "rate"), [(-1, 8000), (float("nan"), 8000), (10, 0)])
def test_ms_to_samples_rejects_bad_input(ms: float, rate: int) -> None:
    with pytest.raises(ValueError):
        ms_to_samples(ms, rate)


def test_silence_is_float32_zeros_of_rounded_length() -> None:
    quiet = silence(250, 22050)
    assert quiet.dtype == np.float32
    assert quiet.shape == (5512,)  # 5512.5 rounds half to even
    assert not quiet.any()


def test_fade_out_ramps_tail_to_zero_and_leaves_input_alone() -> None:
    rate = 8000
    ones = np.ones(400, dtype=np.float32)
    faded = fade_out(ones, rate, ms=8.0)  # 64-sample ramp
    assert faded.dtype == np.float32
    assert np.all(ones == 1.0)
    assert np.all(faded[:-64] == 1.0)
    ramp = faded[-64:]
    assert ramp[-1] == 0.0
    assert ramp[0] < 1.0
    assert np.all(np.diff(ramp) < 0)
    # Raised cosine: symmetric around half gain.
    np.testing.assert_allclose(ramp[:-1] + ramp[-2::-1], 1.0, atol=1e-6)


def test_fade_in_mirrors_fade_out() -> None:
    rate = 16000
    ones = np.ones(1000, dtype=np.float32)
    np.testing.assert_array_equal(fade_in(ones, rate), fade_out(ones, rate)[::-1])
    assert fade_in(ones, rate)[0] == 0.0


@pytest.mark.parametrize("fade", [fade_out, fade_in])
def test_fade_shorter_than_ramp_fades_everything(fade: object) -> None:
    assert callable(fade)
    ones = np.ones(10, dtype=np.float32)
    faded = fade(ones, 48000, 8.0)
    assert faded.shape == (10,)
    assert np.all(faded < 1.0)
    assert 0.0 in (faded[0], faded[-1])


@pytest.mark.parametrize("fade", [fade_out, fade_in])
def test_fade_handles_empty_and_zero_length_ramp(fade: object) -> None:
    assert callable(fade)
    assert fade(np.zeros(0, dtype=np.float32), 8000).shape == (0,)
    ones = np.ones(10, dtype=np.float32)
    np.testing.assert_array_equal(fade(ones, 8000, 0.0), ones)
