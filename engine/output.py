"""From voice samples to wire frames: resample, cut into frames, encode.

One :class:`OutputStream` lives for one utterance. It is incremental and
chunk-invariant: the frames it returns do not depend on how the voice's audio
was chunked. Segment ends are explicit (:meth:`end_segment`), because a
segment's tail must not wait in the resampler for text that may never come.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.audio import AudioEncoding, AudioFrame, fade_out
from engine.codecs import decode, encode_frame
from engine.framer import Framer, frame_samples_for
from engine.resample import StreamingResampler

Samples = npt.NDArray[np.float32]


class OutputStream:
    """Turns float32 mono audio at ``in_rate`` into ``frame_ms`` frames at ``out_rate``.

    Every frame holds exactly ``frame_samples`` samples: at a segment end the
    last partial frame is padded with silence (the voice ends each sentence
    in silence anyway), so byte counts are always whole frames.
    """

    def __init__(self, in_rate: int, out_rate: int, encoding: AudioEncoding, frame_ms: int) -> None:
        self.out_rate = out_rate
        self.encoding: AudioEncoding = encoding
        self._resampler = StreamingResampler(in_rate, out_rate)
        self._framer = Framer(frame_samples_for(out_rate, frame_ms))

    @property
    def frame_samples(self) -> int:
        return self._framer.frame_samples

    def push(self, samples: Samples) -> list[AudioFrame]:
        """Frames completed by ``samples`` (voice rate, float32 mono in [-1, 1])."""
        return self._encode(self._framer.push(self._resampler.process(samples)))

    def end_segment(self) -> list[AudioFrame]:
        """Flush the resampler and pad the last partial frame with silence."""
        frames = self._framer.push(self._resampler.flush())
        rest = self._framer.flush()
        if rest is not None:
            frames.append(
                np.concatenate([rest, np.zeros(self.frame_samples - len(rest), np.float32)])
            )
        return self._encode(frames)

    def silence(self, ms: float) -> list[AudioFrame]:
        """Whole frames of silence covering about ``ms`` (at least one frame if ms > 0)."""
        count = max(1, round(ms * self.out_rate / 1000 / self.frame_samples)) if ms > 0 else 0
        return self._encode([np.zeros(self.frame_samples, np.float32)] * count)

    def reset(self) -> None:
        """Drop buffered audio (on cancel)."""
        self._resampler.reset()
        self._framer.reset()

    def _encode(self, frames: list[Samples]) -> list[AudioFrame]:
        return [encode_frame(f, self.out_rate, self.encoding) for f in frames]


def faded(frame: AudioFrame) -> AudioFrame:
    """``frame`` with a fade to silence over its whole length (ends a cut-off stream)."""
    samples = fade_out(decode(frame.data, frame.encoding), frame.sample_rate, frame.duration_ms)
    return encode_frame(samples, frame.sample_rate, frame.encoding)
