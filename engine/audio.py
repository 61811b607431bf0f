"""Audio formats, frames and small sample-level helpers.

Internal sample convention, everywhere in the engine: mono ``float32`` samples
in ``[-1.0, 1.0]``, held in a one-dimensional numpy array. Bytes only appear at
the wire edge (see :mod:`engine.codecs`), and every block of bytes travels in
an :class:`AudioFrame` that carries its own format.

Durations are in milliseconds (``ms``), rates in samples per second (Hz),
lengths in samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt

AudioEncoding = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
"""Wire encodings: signed 16-bit PCM, 32-bit float PCM, G.711 mu-law, G.711 A-law."""

ENCODINGS: Final[tuple[AudioEncoding, ...]] = get_args(AudioEncoding)

_BYTES_PER_SAMPLE: Final[dict[AudioEncoding, int]] = {
    "pcm_s16le": 2,
    "pcm_f32le": 4,
    "mulaw": 1,
    "alaw": 1,
}


def bytes_per_sample(encoding: AudioEncoding) -> int:
    """Size of one mono sample on the wire, in bytes.

    Raises ``ValueError`` for an unknown encoding.
    """
    try:
        return _BYTES_PER_SAMPLE[encoding]
    except KeyError:
        raise ValueError(f"unknown audio encoding {encoding!r}") from None


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """A block of encoded mono audio, ready for the wire.

    Invariant (checked on construction, so an inconsistent frame cannot
    exist): ``len(data) == samples * bytes_per_sample(encoding)``, the rate is
    positive and ``samples`` is non-negative.
    """

    data: bytes
    sample_rate: int
    encoding: AudioEncoding
    samples: int

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown audio encoding {self.encoding!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.samples < 0:
            raise ValueError(f"samples must be non-negative, got {self.samples}")
        expected = self.samples * bytes_per_sample(self.encoding)
        if len(self.data) != expected:
            raise ValueError(
                f"{self.samples} {self.encoding} samples need {expected} bytes, "
                f"got {len(self.data)}"
            )

    @property
    def duration_ms(self) -> float:
        """Playback duration in milliseconds."""
        return self.samples * 1000.0 / self.sample_rate


def ms_to_samples(ms: float, sample_rate: int) -> int:
    """Number of samples in ``ms`` milliseconds at ``sample_rate``, rounded to nearest.

    Raises ``ValueError`` for a negative or non-finite duration or a non-positive rate.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"duration must be finite and non-negative, got {ms} ms")
    return round(ms * sample_rate / 1000.0)


def silence(ms: float, sample_rate: int) -> npt.NDArray[np.float32]:
    """``ms`` milliseconds of silence (float32 zeros), length rounded to nearest sample."""
    return np.zeros(ms_to_samples(ms, sample_rate), dtype=np.float32)


def _fade_gain(length: int) -> npt.NDArray[np.float32]:
    """Raised-cosine gain falling from just below 1 to exactly 0 over ``length`` samples."""
    phase = np.arange(1, length + 1, dtype=np.float64) * (np.pi / length)
    return (0.5 * (1.0 + np.cos(phase))).astype(np.float32)


def fade_out(
    samples: npt.NDArray[np.float32], sample_rate: int, ms: float = 8.0
) -> npt.NDArray[np.float32]:
    """Copy of ``samples`` whose last ``ms`` milliseconds ramp down to silence.

    The ramp is a raised cosine whose final sample is exactly 0, so audio cut
    here (cancel, barge-in) ends without a click. If ``samples`` is shorter
    than the ramp, the whole array is faded. The input is not modified.
    """
    out = np.array(samples, dtype=np.float32, copy=True)
    length = min(ms_to_samples(ms, sample_rate), out.shape[0])
    if length > 0:
        out[-length:] *= _fade_gain(length)
    return out


def fade_in(
    samples: npt.NDArray[np.float32], sample_rate: int, ms: float = 8.0
) -> npt.NDArray[np.float32]:
    """Copy of ``samples`` whose first ``ms`` milliseconds ramp up from silence.

    Mirror image of :func:`fade_out`: the first sample is exactly 0. If
    ``samples`` is shorter than the ramp, the whole array is faded. The input
    is not modified.
    """
    out = np.array(samples, dtype=np.float32, copy=True)
    length = min(ms_to_samples(ms, sample_rate), out.shape[0])
    if length > 0:
        out[:length] *= _fade_gain(length)[::-1]
    return out
