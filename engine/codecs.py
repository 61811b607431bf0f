"""Wire codecs: float32 mono samples in ``[-1, 1]`` to and from bytes.

Encodings (all little-endian where it matters):

- ``pcm_s16le``: ``round(x * 32767)`` as int16, so full scale is symmetric.
- ``pcm_f32le``: the float32 samples themselves.
- ``mulaw`` / ``alaw``: ITU-T G.711, one byte per sample, computed from the
  ``pcm_s16le`` value. Bit-exact with CPython's ``audioop.lin2ulaw`` /
  ``lin2alaw`` (the classic Sun reference code, which drops the 2 / 3 low
  bits with an arithmetic shift before companding), so clients with any
  standard G.711 decoder hear the same thing.

Before encoding, samples are sanitised: NaN becomes 0 and everything is
clipped to ``[-1, 1]``. Encoding is table-driven and vectorised: each call is
a few numpy passes over the input, with no Python loop over samples.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from engine.audio import AudioEncoding, AudioFrame, bytes_per_sample

PCM16_SCALE: Final = 32767.0
"""Full scale of the 16-bit conversion: 1.0 maps to 32767, -1.0 to -32767."""

_INT16_ALL: Final = np.arange(-32768, 32768, dtype=np.int32)
_CODES_ALL: Final = np.arange(256, dtype=np.int32)

# Segment end points of the Sun G.711 reference code (14-bit mu-law magnitudes
# after biasing, 13-bit A-law magnitudes).
_ULAW_SEGMENT_END: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_END: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """Mu-law code for every int16 value, indexed by the value's uint16 bit pattern."""
    pcm14 = _INT16_ALL >> 2
    negative = pcm14 < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm14), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_END, magnitude, side="left")
    mantissa = (magnitude >> np.minimum(segment + 1, 8)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | mantissa) ^ mask
    return _by_bit_pattern(code.astype(np.uint8))


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    """A-law code for every int16 value, indexed by the value's uint16 bit pattern."""
    pcm13 = _INT16_ALL >> 3
    negative = pcm13 < 0
    mask = np.where(negative, 0x55, 0xD5)
    magnitude = np.where(negative, -pcm13 - 1, pcm13)
    segment = np.searchsorted(_ALAW_SEGMENT_END, magnitude, side="left")
    mantissa = (magnitude >> np.clip(segment, 1, 7)) & 0x0F
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | mantissa) ^ mask
    return _by_bit_pattern(code.astype(np.uint8))


def _by_bit_pattern(table: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Reorder a table built over -32768..32767 so index ``v.view(uint16)`` finds ``v``."""
    return np.roll(table, -32768)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    """Linear int16 value of every mu-law code."""
    inverted = ~_CODES_ALL & 0xFF
    level = (((inverted & 0x0F) << 3) + _ULAW_BIAS) << ((inverted & 0x70) >> 4)
    linear = np.where(inverted & 0x80, _ULAW_BIAS - level, level - _ULAW_BIAS)
    return linear.astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    """Linear int16 value of every A-law code."""
    toggled = _CODES_ALL ^ 0x55
    segment = (toggled & 0x70) >> 4
    level = (toggled & 0x0F) << 4
    level = np.where(segment == 0, level + 8, (level + 0x108) << np.maximum(segment - 1, 0))
    linear = np.where(toggled & 0x80, level, -level)
    return linear.astype(np.int16)


_ULAW_ENCODE: Final = _ulaw_encode_table()
_ALAW_ENCODE: Final = _alaw_encode_table()
_ULAW_DECODE: Final = _ulaw_decode_table()
_ALAW_DECODE: Final = _alaw_decode_table()


def _as_mono(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    chunk = np.asarray(samples, dtype=np.float32)
    if chunk.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {chunk.shape}")
    return chunk


def to_pcm16(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Float samples to int16: NaN to 0, clip to [-1, 1], scale by 32767, round half to even."""
    scaled = _as_mono(samples) * np.float32(PCM16_SCALE)  # fresh array, safe to edit in place
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, -PCM16_SCALE, PCM16_SCALE, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int16)


def encode(samples: npt.NDArray[np.float32], encoding: AudioEncoding) -> bytes:
    """Encode 1-D float samples (nominally in [-1, 1]) as ``encoding`` wire bytes.

    Output length is ``len(samples) * bytes_per_sample(encoding)``.
    """
    if encoding == "pcm_f32le":
        clean = np.nan_to_num(_as_mono(samples), nan=0.0)  # copies; input untouched
        np.clip(clean, -1.0, 1.0, out=clean)
        return clean.astype("<f4", copy=False).tobytes()
    pcm = to_pcm16(samples)
    if encoding == "pcm_s16le":
        return pcm.astype("<i2", copy=False).tobytes()
    if encoding == "mulaw":
        return _ULAW_ENCODE[pcm.view(np.uint16)].tobytes()
    if encoding == "alaw":
        return _ALAW_ENCODE[pcm.view(np.uint16)].tobytes()
    raise ValueError(f"unknown audio encoding {encoding!r}")


def decode(data: bytes, encoding: AudioEncoding) -> npt.NDArray[np.float32]:
    """Decode ``encoding`` wire bytes into float32 samples in [-1, 1].

    Integer formats are divided by 32767 (the inverse of :func:`encode`);
    int16 -32768 is clipped to -1. Raises ``ValueError`` if ``data`` is not a
    whole number of samples.
    """
    width = bytes_per_sample(encoding)
    if len(data) % width:
        raise ValueError(f"{len(data)} bytes is not a whole number of {encoding} samples")
    if encoding == "pcm_f32le":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if encoding == "pcm_s16le":
        pcm = np.frombuffer(data, dtype="<i2")
    else:
        table = _ULAW_DECODE if encoding == "mulaw" else _ALAW_DECODE
        pcm = table[np.frombuffer(data, dtype=np.uint8)]
    samples = pcm.astype(np.float32) / np.float32(PCM16_SCALE)
    np.maximum(samples, np.float32(-1.0), out=samples)
    return samples


def encode_frame(
    samples: npt.NDArray[np.float32], sample_rate: int, encoding: AudioEncoding
) -> AudioFrame:
    """Encode ``samples`` into a self-describing :class:`AudioFrame`."""
    data = encode(samples, encoding)
    return AudioFrame(
        data=data,
        sample_rate=sample_rate,
        encoding=encoding,
        samples=len(data) // bytes_per_sample(encoding),
    )
