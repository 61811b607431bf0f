"""A loaded, warmed transformers VITS voice (MMS-TTS and friends) that streams chunks.

The same contract as ``PiperStreamingVoice``: ``load`` does every piece of
file I/O and warm-up, ``synthesize`` yields float32 chunks at
``sample_rate`` and is as fast on the first call as on the hundredth.

Per segment the frontend (text encoder, duration predictor, expansion) runs
once on torch; then the flow and the HiFi-GAN decoder run window by window
(``engine.chunking``) on onnxruntime sessions exported from the model at the
first load and cached (``engine.vits_export``). If the export fails they run
on torch instead (``runtime``). At every load a probe is decoded one-shot
with ``VitsModel.forward`` and in small chunks, noise off; they must agree.
If they do not, even with doubled context, the voice decodes whole segments
with ``VitsModel.forward`` and says why in ``fallback_reason``.

torch's intra-op thread count is process-wide: ``load`` sets it to
``threads`` (the engine's per-call thread count), which is right for a
server that runs one engine call per worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from engine.cache_entry import timed as _timed
from engine.chunking import ChunkSchedule, FlowProgress
from engine.vits_export import OnnxStages
from engine.vits_files import VitsFiles, read_tokenizer_config, read_vits_config, voice_language
from engine.vits_model import VitsStages, load_model, receptive_fields
from engine.vits_text import VitsText
from engine.voice_files import VoiceLoadError
from engine.warm import Sync, run_together

log = logging.getLogger("engine")

Float32Array = npt.NDArray[np.float32]
Runtime = Literal["onnxruntime", "torch"]
PROBE_TEXT = "Every chunk must sound like the whole sentence."
PROBE_FRAMES = 160  # long enough to cross chunk and flow-window boundaries
MAX_ABS_DIFF = 1e-4
BACKEND = "transformers-vits"
# MMS-TTS decodes a 16 ms frame in ~6 ms of CPU on one thread (~6x a Piper
# medium voice per second of audio) and every chunk boundary costs 2 x 14
# frames of decoder context, so chunks cannot start as small as Piper's. A first chunk of 32
# frames (512 ms of audio, ~0.3 s to decode) leaves ~60 ms of slack for the
# second on one thread (24 frames would leave 1 ms); growth 1.5 keeps every
# later chunk inside the audio already queued; the cap of 64 frames keeps one
# call under ~0.6 s, so a new session never waits long for a worker, at a
# real-time factor of ~0.5. See docs/vits.md.
VITS_SCHEDULE = ChunkSchedule(
    first_frames=32, growth=1.5, max_frames=64, min_tail_frames=16, flow_ahead_frames=128
)


class _VerifyError(RuntimeError):
    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry  # more context might help (a chunking error, not a stage error)


@dataclass
class VitsStreamingVoice:
    """A transformers VITS voice ready to synthesize; create with :meth:`load`."""

    name: str
    files: VitsFiles
    sample_rate: int
    language: str
    text: VitsText
    stages: VitsStages
    schedule: ChunkSchedule
    noise_scale: float
    noise_scale_duration: float
    speaking_rate: float
    runtime: Runtime = "onnxruntime"
    onnx: OnnxStages | None = None
    fallback_reason: str | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    verify_max_diff: float | None = None
    backend: str = BACKEND
    _probe: list[int] | None = field(default=None, repr=False)

    @property
    def streaming(self) -> bool:
        """True when audio is decoded in chunks (verified at load)."""
        return self.fallback_reason is None

    @property
    def hop(self) -> int:
        return self.stages.hop

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        files: VitsFiles,
        *,
        cache_dir: Path,
        threads: int = 1,
        schedule: ChunkSchedule | None = None,
        runtime: Runtime = "onnxruntime",
    ) -> VitsStreamingVoice:
        """Load, export (or reuse the export), verify and warm. Raises :class:`VoiceLoadError`.

        ``schedule`` defaults to :data:`VITS_SCHEDULE` with the contexts derived
        from the model's receptive fields; a given one is used as it is.
        """
        try:
            return cls._load(files, cache_dir, threads, schedule, runtime)
        except VoiceLoadError:
            raise
        except Exception as exc:  # anything torch or transformers raise on a bad checkpoint
            raise VoiceLoadError(f"{files.folder}: cannot load the VITS voice: {exc}") from exc

    @classmethod
    def _load(
        cls,
        files: VitsFiles,
        cache_dir: Path,
        threads: int,
        schedule: ChunkSchedule | None,
        runtime: Runtime,
    ) -> VitsStreamingVoice:
        timings: dict[str, float] = {}
        config = read_vits_config(files)
        tokenizer_config = read_tokenizer_config(files)
        text = _timed(timings, "tokenizer", lambda: VitsText.load(files, tokenizer_config))
        torch.set_num_threads(threads)
        model = _timed(timings, "weights", lambda: load_model(files))
        flow_context, vocoder_context = receptive_fields(model.config)
        voice = cls(
            name=files.name,
            files=files,
            sample_rate=int(config.get("sampling_rate", 16000)),
            language=voice_language(files, tokenizer_config),
            text=text,
            stages=VitsStages(model, speaker_id=0),
            schedule=schedule
            or replace(VITS_SCHEDULE, flow_context=flow_context, vocoder_context=vocoder_context),
            noise_scale=float(model.noise_scale),
            noise_scale_duration=float(model.noise_scale_duration),
            speaking_rate=float(model.speaking_rate),
            runtime=runtime,
            load_seconds=timings,
        )
        if runtime == "onnxruntime":
            try:
                voice.onnx = OnnxStages.open(model, files, cache_dir, threads, timings)
            except Exception as exc:  # an architecture the exporter cannot trace
                log.warning(
                    "engine: %s: ONNX export failed, flow and decoder on torch: %s", files.name, exc
                )
                voice.runtime = "torch"
        try:
            try:
                voice._verify(timings)
            except _VerifyError as exc:
                if not exc.retry:  # the stages themselves differ from forward: no context helps
                    raise
                log.warning("engine: %s: %s; retrying with doubled context", files.name, exc)
                voice.schedule = replace(
                    voice.schedule,
                    vocoder_context=2 * voice.schedule.vocoder_context,
                    flow_context=2 * voice.schedule.flow_context,
                )
                voice._verify(timings)
        except _VerifyError as exc:
            log.warning("engine: voice %s decodes whole segments: %s", files.name, exc)
            voice.fallback_reason = str(exc)
        except Exception as exc:
            raise VoiceLoadError(f"{files.folder}: cannot run the VITS model: {exc}") from exc
        _timed(timings, "warm-up", voice._warm_up)
        return voice

    def _verify(self, timings: dict[str, float]) -> None:
        """One-shot ``VitsModel.forward``, our one-shot and our chunks must agree (noise off)."""

        def check() -> None:
            ids = self._probe_ids()
            whole = self._decode_whole(ids, 1.0, noise=False)
            reference = self.stages.one_shot(ids, self.speaking_rate)
            if len(reference) != len(whole) or len(whole) % self.hop:
                raise _VerifyError(
                    f"{len(whole)} samples, VitsModel.forward {len(reference)}", retry=False
                )
            diff = float(np.max(np.abs(reference - whole)))
            if not diff <= MAX_ABS_DIFF:
                raise _VerifyError(
                    f"the stages differ from VitsModel.forward by {diff:.3g}", retry=False
                )
            small = replace(  # boundaries at 12, 36, 84, 132 frames; several flow windows
                self.schedule,
                first_frames=12,
                growth=2.0,
                max_frames=48,
                min_tail_frames=0,
                flow_ahead_frames=48,
            )
            chunked = np.concatenate(list(self._decode_chunked(ids, 1.0, noise=False, plan=small)))
            if len(chunked) != len(whole):
                raise _VerifyError(f"chunked decoding gave {len(chunked)} of {len(whole)} samples")
            diff = max(diff, float(np.max(np.abs(chunked - whole))))
            self.verify_max_diff = diff
            if not diff <= MAX_ABS_DIFF:
                raise _VerifyError(f"chunked output differs from one-shot by {diff:.3g}")

        _timed(timings, "verify", check)

    def _warm_up(self) -> None:
        """Run every stage once at the shapes of a first chunk.

        The verification has already run each stage at the probe's full length
        (about the largest window), so onnxruntime's arena has grown; what is
        left is the path to first audio: the tokenizer, the frontend and the
        first flow and decoder windows (torch compiles its oneDNN convolutions
        per window length, so on the torch runtime this matters most).
        """
        for _ in self.synthesize("Hi."):
            pass
        if not self.streaming:
            return
        plan, probe = self.schedule, self._probe_ids()
        prior, speaker = self._frontend(probe, 1.0, noise=False)
        first = plan.first_frames + plan.vocoder_context
        self._flow(_tiled(prior, first + plan.flow_context), speaker)
        self._decode(_tiled(prior, first), speaker)

    def warm(self, copies: int) -> None:
        """Run the widest windows on ``copies`` threads at once (see :mod:`engine.warm`)."""
        run_together(self._run_largest, copies)

    def _run_largest(self, sync: Sync) -> None:
        """Frontend on the probe, then flow and decoder at their widest windows; ``sync`` first."""
        sync()
        if not self.streaming:
            for _ in self.synthesize(PROBE_TEXT):
                pass
            return
        plan = self.schedule
        prior, speaker = self._frontend(self._probe_ids(), 1.0, noise=False)
        sync()
        self._flow(_tiled(prior, plan.max_frames + 2 * plan.flow_context), speaker)
        sync()
        self._decode(_tiled(prior, plan.max_frames + 2 * plan.vocoder_context), speaker)

    # --------------------------------------------------------------- synthesis
    def synthesize(self, text: str, speed: float = 1.0) -> Generator[Float32Array, None, None]:
        """Float32 mono chunks at ``sample_rate`` for ``text`` (one segment)."""
        ids = self.text.ids(text)
        if ids:
            yield from self.synthesize_ids(ids, speed)

    def synthesize_ids(self, ids: list[int], speed: float) -> Iterator[Float32Array]:
        """Chunks of audio for one token id sequence; ``speed`` > 1 is faster."""
        if self.streaming:
            yield from self._decode_chunked(ids, speed, noise=True)
        else:
            yield self._forward(ids, speed)

    def _forward(self, ids: list[int], speed: float) -> Float32Array:
        """The whole segment through ``VitsModel.forward`` (the fallback), noise on."""
        return self.stages.forward(ids, self.speaking_rate * speed, noise=True)

    def _frontend(
        self, ids: list[int], speed: float, noise: bool
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        latents = self.stages.frontend(
            ids,
            speaking_rate=self.speaking_rate * speed,
            noise_scale=self.noise_scale if noise else 0.0,
            noise_scale_duration=self.noise_scale_duration if noise else 0.0,
        )
        speaker = None if latents.speaker is None else latents.speaker.numpy()
        return latents.prior.numpy(), speaker

    def _flow(
        self, prior: npt.NDArray[np.float32], speaker: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        if self.onnx is not None:
            return self.onnx.flow(prior, speaker)
        prior = np.ascontiguousarray(prior)
        g = None if speaker is None else torch.from_numpy(speaker)
        return self.stages.flow(torch.from_numpy(prior), g).numpy()

    def _decode(
        self, flowed: npt.NDArray[np.float32], speaker: npt.NDArray[np.float32] | None
    ) -> Float32Array:
        if self.onnx is not None:
            return self.onnx.decoder(flowed, speaker)
        flowed = np.ascontiguousarray(flowed)
        g = None if speaker is None else torch.from_numpy(speaker)
        return self.stages.decoder(torch.from_numpy(flowed), g)

    def _decode_whole(self, ids: list[int], speed: float, *, noise: bool) -> Float32Array:
        """Frontend, then flow and decoder over the whole latent sequence at once."""
        prior, speaker = self._frontend(ids, speed, noise)
        return self._decode(self._flow(prior, speaker), speaker)

    def _decode_chunked(
        self, ids: list[int], speed: float, *, noise: bool, plan: ChunkSchedule | None = None
    ) -> Iterator[Float32Array]:
        """Frontend once, then flow and decoder window by window (see ``chunking``)."""
        plan = plan or self.schedule
        prior, speaker = self._frontend(ids, speed, noise)
        total = prior.shape[-1]
        flowed = np.empty_like(prior)
        progress = FlowProgress(total, plan.flow_context, min_frames=plan.flow_ahead_frames)
        for start, end in plan.chunks(total):
            lo, hi = plan.vocoder_window(start, end, total)
            for f_lo, f_hi, keep_from, keep_to in progress.windows_until(hi):
                out = self._flow(prior[..., f_lo:f_hi], speaker)
                flowed[..., keep_from:keep_to] = out[..., keep_from - f_lo : keep_to - f_lo]
            audio = self._decode(flowed[..., lo:hi], speaker)
            yield audio[(start - lo) * self.hop : (end - lo) * self.hop]

    def _probe_ids(self) -> list[int]:
        """Token ids of a probe about :data:`PROBE_FRAMES` long (computed once)."""
        if self._probe is None:
            ids = self.text.ids(PROBE_TEXT)
            if len(ids) < 32:  # a vocabulary without Latin letters: any valid ids will do
                ids = self.text.vocabulary_ids(97)
            prior, _ = self._frontend(ids, 1.0, noise=False)
            frames = prior.shape[-1]
            if frames > PROBE_FRAMES:  # MMS: ~4 frames per token; decoding costs per frame
                ids = ids[: max(9, len(ids) * PROBE_FRAMES // frames)]
            self._probe = ids
        return self._probe


def _tiled(value: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(np.take(value, np.arange(frames) % value.shape[-1], axis=-1))
