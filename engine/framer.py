"""Cut a stream of samples into fixed-size frames.

The framer is incremental and chunk-invariant: whatever sizes the input
arrives in, the concatenation of everything it returns equals the
concatenation of everything pushed, and every frame except the one returned
by :meth:`Framer.flush` holds exactly ``frame_samples`` samples.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.audio import ms_to_samples


def frame_samples_for(sample_rate: int, frame_ms: float) -> int:
    """Samples per frame of ``frame_ms`` milliseconds at ``sample_rate``.

    Rounded to the nearest integer and never less than 1. Raises
    ``ValueError`` for a non-positive rate or duration.
    """
    if frame_ms <= 0:
        raise ValueError(f"frame_ms must be positive, got {frame_ms}")
    return max(1, ms_to_samples(frame_ms, sample_rate))


class Framer:
    """Accumulates float32 mono samples and hands out complete frames.

    Memory is bounded: between calls at most ``frame_samples - 1`` samples
    are held. Returned frames are fresh arrays, never views of the caller's
    input, so the caller may reuse its buffers.
    """

    def __init__(self, frame_samples: int) -> None:
        if frame_samples < 1:
            raise ValueError(f"frame_samples must be at least 1, got {frame_samples}")
        self._frame_samples = frame_samples
        self._pending: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)

    @property
    def frame_samples(self) -> int:
        """Length of every complete frame, in samples."""
        return self._frame_samples

    @property
    def pending_samples(self) -> int:
        """Samples held back, waiting for enough input to fill a frame."""
        return int(self._pending.shape[0])

    def push(self, samples: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Add ``samples`` (1-D) and return every frame now complete, in order.

        Each returned frame has exactly ``frame_samples`` samples; the
        remainder is kept for the next call. May return an empty list.
        """
        chunk = np.asarray(samples, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"expected 1-D mono samples, got shape {chunk.shape}")
        # concatenate always copies, so the frames never alias the caller's array.
        buffer = np.concatenate((self._pending, chunk))
        size = self._frame_samples
        complete = buffer.shape[0] // size * size
        frames = [buffer[start : start + size] for start in range(0, complete, size)]
        # Copy the tail so the (possibly large) buffer can be freed.
        self._pending = buffer[complete:].copy()
        return frames

    def flush(self) -> npt.NDArray[np.float32] | None:
        """Return the held remainder as a final, shorter frame, or ``None`` if empty.

        Afterwards the framer is empty and ready for a new stream.
        """
        if self._pending.shape[0] == 0:
            return None
        tail = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return tail

    def reset(self) -> None:
        """Drop the held remainder (used on cancel)."""
        self._pending = np.zeros(0, dtype=np.float32)
