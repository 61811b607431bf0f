"""Tests for engine.codecs: PCM and G.711 encoders, checked against audioop."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.audio import ENCODINGS, AudioEncoding, bytes_per_sample
from engine.codecs import decode, encode, encode_frame, to_pcm16

with warnings.catch_warnings():
    # audioop is deprecated (removed in 3.13); here it is only the reference oracle.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_INT16_BYTES = ALL_INT16.astype("<i2").tobytes()
ALL_CODES = bytes(range(256))


def _samples_for(pcm: np.ndarray) -> np.ndarray:
    """Float samples that encode to exactly the int16 values ``pcm`` (-32768 excluded)."""
    return (pcm.astype(np.float64) / 32767).astype(np.float32)


def _g711_bytes(pcm: np.ndarray, encoding: AudioEncoding) -> bytes:
    return encode(_samples_for(pcm), encoding)


def test_float_to_pcm16_hits_every_int16_but_the_most_negative() -> None:
    representable = ALL_INT16[1:]
    np.testing.assert_array_equal(to_pcm16(_samples_for(representable)), representable)


def test_mulaw_matches_audioop_for_all_int16() -> None:
    # -32768 has no float in [-1, 1]; it compands like -32767 (both clip).
    assert audioop.lin2ulaw(ALL_INT16_BYTES[:4], 2) == audioop.lin2ulaw(ALL_INT16_BYTES[2:4] * 2, 2)
    expected = audioop.lin2ulaw(ALL_INT16_BYTES[2:], 2)
    assert _g711_bytes(ALL_INT16[1:], "mulaw") == expected


def test_alaw_matches_audioop_for_all_int16() -> None:
    # -32768 has no float in [-1, 1]; it compands like -32767 (both clip).
    assert audioop.lin2alaw(ALL_INT16_BYTES[:4], 2) == audioop.lin2alaw(ALL_INT16_BYTES[2:4] * 2, 2)
    expected = audioop.lin2alaw(ALL_INT16_BYTES[2:], 2)
    assert _g711_bytes(ALL_INT16[1:], "alaw") == expected


@pytest.mark.parametrize(
    ("encoding", "reference"), [("mulaw", audioop.ulaw2lin), ("alaw", audioop.alaw2lin)]
)
def test_g711_decoding_matches_audioop_for_all_codes(
    encoding: AudioEncoding, reference: object
) -> None:
    assert callable(reference)
    expected = np.frombuffer(reference(ALL_CODES, 2), dtype="<i2") / 32767
    np.testing.assert_allclose(decode(ALL_CODES, encoding), expected, rtol=0, atol=1e-7)


def _segment_step(code: np.ndarray, encoding: AudioEncoding) -> np.ndarray:
    """Quantisation step, in int16 units, of the segment each G.711 code lies in."""
    if encoding == "mulaw":
        segment = ((~code & 0xFF) >> 4) & 0x7
        step: np.ndarray = 1 << (segment.astype(np.int64) + 3)
    else:
        segment = (((code ^ 0x55) & 0xFF) >> 4) & 0x7
        step = 1 << (np.maximum(segment, 1).astype(np.int64) + 3)
    return step


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_round_trip_error_is_within_one_segment_step(encoding: AudioEncoding) -> None:
    pcm = ALL_INT16[1:]
    data = _g711_bytes(pcm, encoding)
    decoded = np.rint(decode(data, encoding).astype(np.float64) * 32767)
    error = np.abs(decoded - pcm)
    step = _segment_step(np.frombuffer(data, dtype=np.uint8), encoding)
    assert np.all(error <= step)
    # Companding keeps relative error small for everything but the quietest samples.
    loud = np.abs(pcm) >= 1024
    assert np.max(error[loud] / np.abs(pcm[loud])) < 1 / 16


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_g711_decode_then_encode_is_stable(encoding: AudioEncoding) -> None:
    # Every code's decoded value re-encodes to itself, except mu-law's negative zero (0x7F).
    decoded = decode(ALL_CODES, encoding)
    reencoded = np.frombuffer(encode(decoded, encoding), dtype=np.uint8)
    same = reencoded == np.frombuffer(ALL_CODES, dtype=np.uint8)
    mismatched = np.flatnonzero(~same).tolist()
    assert mismatched == ([0x7F] if encoding == "mulaw" else [])


finite_samples = arrays(
    np.float32,
    st.integers(min_value=0, max_value=300),
    elements=st.floats(min_value=-1, max_value=1, width=32),
)


@given(finite_samples)
def test_s16_round_trip_within_one_step(samples: np.ndarray) -> None:
    decoded = decode(encode(samples, "pcm_s16le"), "pcm_s16le")
    assert decoded.dtype == np.float32
    assert np.all(np.abs(decoded - samples) <= 1 / 32767)


@given(finite_samples)
def test_f32_round_trip_is_exact(samples: np.ndarray) -> None:
    np.testing.assert_array_equal(decode(encode(samples, "pcm_f32le"), "pcm_f32le"), samples)


@given(finite_samples, st.sampled_from(ENCODINGS))
def test_encoded_length_and_decoded_range(samples: np.ndarray, encoding: AudioEncoding) -> None:
    data = encode(samples, encoding)
    assert len(data) == len(samples) * bytes_per_sample(encoding)
    decoded = decode(data, encoding)
    assert decoded.shape == samples.shape
    assert np.all(np.abs(decoded) <= 1.0)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_out_of_range_and_nan_are_sanitised(encoding: AudioEncoding) -> None:
    wild = np.array([2.0, -3.0, np.inf, -np.inf, np.nan], dtype=np.float32)
    tame = np.array([1.0, -1.0, 1.0, -1.0, 0.0], dtype=np.float32)
    assert encode(wild, encoding) == encode(tame, encoding)


def test_encoding_does_not_modify_input() -> None:
    samples = np.array([2.0, np.nan, 0.25], dtype=np.float32)
    for encoding in ENCODINGS:
        encode(samples, encoding)
    np.testing.assert_array_equal(samples, np.array([2.0, np.nan, 0.25], dtype=np.float32))


def test_s16_wire_format_is_little_endian_symmetric() -> None:
    samples = np.array([0.0, 1.0, -1.0, 0.5], dtype=np.float32)
    assert encode(samples, "pcm_s16le") == b"\x00\x00\xff\x7f\x01\x80\x00\x40"


def test_s16_decode_clips_most_negative_value() -> None:
    assert decode(b"\x00\x80", "pcm_s16le").tolist() == [-1.0]


def test_decode_rejects_partial_samples() -> None:
    with pytest.raises(ValueError, match="whole number"):
        decode(b"\x00\x00\x00", "pcm_s16le")


def test_encode_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="1-D"):
        encode(np.zeros((4, 2), dtype=np.float32), "mulaw")


def test_encode_frame_carries_its_format() -> None:
    frame = encode_frame(np.zeros(320, dtype=np.float32), 16000, "pcm_s16le")
    assert (frame.sample_rate, frame.encoding, frame.samples) == (16000, "pcm_s16le", 320)
    assert len(frame.data) == 640
    assert frame.duration_ms == pytest.approx(20.0)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encoding_one_second_at_48k_is_fast(encoding: AudioEncoding) -> None:
    samples = (np.random.default_rng(0).standard_normal(48000) * 0.3).astype(np.float32)
    encode(samples, encoding)  # warm up
    best = min(_timed(lambda: encode(samples, encoding)) for _ in range(20))
    # Typically 0.1-0.3 ms; the bound is loose so a busy CI machine does not flake.
    assert best < 5e-3


def _timed(action: object) -> float:
    assert callable(action)
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
