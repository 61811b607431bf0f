"""Streaming sample-rate conversion that keeps its state between chunks.

The voice produces audio at its own rate (Piper: usually 22050 Hz); clients
ask for 8000-48000 Hz. Resampling each chunk on its own would put a click at
every seam, so one :class:`StreamingResampler` lives for the whole stream and
its output does not depend on how the input was chunked: it is bit-identical
to resampling the concatenated input in one call (libsoxr buffers internally).

Latency: the filter needs look-ahead, so a chunk's last few tens of
milliseconds of output are held back until more input arrives or the stream
ends with ``last=True`` / :meth:`StreamingResampler.flush`. Flush at the end
of every utterance so its tail is not left waiting.
"""

from __future__ import annotations

from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

MIN_OUTPUT_RATE: Final = 8000
MAX_OUTPUT_RATE: Final = 48000

ResampleQuality = Literal["HQ", "VHQ"]
"""libsoxr presets. ``HQ`` (20-bit precision) is already finer than the 16-bit
wire formats, is cheaper and holds back less audio than ``VHQ`` (28-bit)."""


class StreamingResampler:
    """Converts a float32 mono stream from ``in_rate`` to ``out_rate`` (Hz).

    Contract: feed consecutive chunks to :meth:`process`; end the stream with
    ``last=True`` (or :meth:`flush`). The concatenated outputs then equal a
    one-shot conversion of the concatenated input, about
    ``len(input) * out_rate / in_rate`` samples long. After the stream ends
    the resampler is ready for a new, independent stream.

    When the rates are equal the resampler is a pass-through: :meth:`process`
    returns its input converted to float32, without copying if it already is.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: ResampleQuality = "HQ") -> None:
        if in_rate <= 0:
            raise ValueError(f"in_rate must be positive, got {in_rate}")
        if not MIN_OUTPUT_RATE <= out_rate <= MAX_OUTPUT_RATE:
            raise ValueError(
                f"out_rate must be within {MIN_OUTPUT_RATE}-{MAX_OUTPUT_RATE} Hz, got {out_rate}"
            )
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=quality
            )

    @property
    def in_rate(self) -> int:
        """Input sample rate in Hz."""
        return self._in_rate

    @property
    def out_rate(self) -> int:
        """Output sample rate in Hz."""
        return self._out_rate

    @property
    def is_passthrough(self) -> bool:
        """True when input and output rates are equal and no filtering happens."""
        return self._stream is None

    def process(
        self, samples: npt.NDArray[np.float32], last: bool = False
    ) -> npt.NDArray[np.float32]:
        """Resample the next chunk (1-D, may be empty); return the output ready so far.

        With ``last=True`` the held-back tail is emitted too and the stream
        ends; the next call starts a new stream.
        """
        chunk = np.asarray(samples, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {chunk.shape}")
        if self._stream is None:
            return chunk
        out: npt.NDArray[np.float32] = self._stream.resample_chunk(
            np.ascontiguousarray(chunk), last=last
        )
        if last:
            # libsoxr refuses input after the last chunk; start afresh instead.
            self._stream.clear()
        return out

    def flush(self) -> npt.NDArray[np.float32]:
        """End the stream: return the held-back tail (same as ``process(empty, last=True)``)."""
        return self.process(np.zeros(0, dtype=np.float32), last=True)

    def reset(self) -> None:
        """Drop all held state without emitting it (used on cancel)."""
        if self._stream is not None:
            self._stream.clear()
