"""A loaded, warmed Piper voice that streams audio chunk by chunk.

``PiperStreamingVoice.load`` does every piece of file I/O and warm-up: it
reads the config, splits the graph (or reuses the cached split), opens the
onnxruntime sessions, verifies on a probe that chunked decoding equals
one-shot decoding, and runs each stage once at the shapes it will see. After
it returns, ``synthesize`` is as fast on the first call as on the hundredth.

If the graph cannot be split or the check fails, the voice falls back to
whole-sentence decoding with the original graph and says why in
``fallback_reason`` (and in the log).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from piper import PiperVoice
from piper.config import PiperConfig

from engine.cache_entry import timed
from engine.chunking import ChunkSchedule, FlowProgress
from engine.graph_split import GraphSplitError
from engine.split_cache import SplitFiles, file_sha256, load_or_split
from engine.voice_files import VoiceFiles, VoiceLoadError, read_config
from engine.warm import Sync, run_together

log = logging.getLogger("engine")

Float32Array = npt.NDArray[np.float32]
PROBE_TEXT = "Streaming speech must sound exactly like the whole sentence, every time."
MAX_ABS_DIFF = 1e-4


def session_options(threads: int) -> ort.SessionOptions:
    """onnxruntime options: ``threads`` intra-op threads, no idle spinning, no memory patterns.

    Memory patterns are off because every input length is a new shape here
    (sentence lengths, chunk windows): onnxruntime keeps one planned pattern
    per shape set, so resident memory crept up for as long as new lengths came.
    Measured (2 threads, 160 random sentences each, engine only):
    with patterns 382 -> 387 MB over the last 100 sentences, 387 MB at the
    end; without, 302 -> 303 MB over the same span, 316 MB at the end; same
    wall time (86.8 s without vs 88.2 s with).
    """
    options = ort.SessionOptions()
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass
class _Stages:
    """The split sessions and the names between them."""

    frontend: ort.InferenceSession
    flow: ort.InferenceSession
    vocoder: ort.InferenceSession
    files: SplitFiles
    time_axis: frozenset[str]  # frontend outputs whose last axis is time


@dataclass
class PiperStreamingVoice:
    """A Piper voice ready to synthesize; create with :meth:`load`."""

    name: str
    files: VoiceFiles
    sample_rate: int
    language: str
    phonemizer: PiperVoice
    schedule: ChunkSchedule
    noise_scale: float
    length_scale: float
    noise_w: float
    hop: int = 256
    stages: _Stages | None = None
    full: ort.InferenceSession | None = None
    fallback_reason: str | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    verify_max_diff: float | None = None
    speaker_id: int | None = None
    backend: str = "piper"

    @property
    def streaming(self) -> bool:
        """True when audio is decoded in chunks (the split worked and verified)."""
        return self.stages is not None

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        files: VoiceFiles,
        *,
        cache_dir: Path,
        threads: int = 1,
        schedule: ChunkSchedule | None = None,
    ) -> PiperStreamingVoice:
        """Load, split, verify and warm a voice. Raises :class:`VoiceLoadError`."""
        timings: dict[str, float] = {}
        config = read_config(files)
        try:
            piper_config = PiperConfig.from_dict(config)
        except Exception as exc:
            raise VoiceLoadError(f"{files.config}: not a Piper voice config: {exc}") from exc
        inference = config.get("inference", {})
        voice = cls(
            name=files.name,
            files=files,
            sample_rate=piper_config.sample_rate,
            language=str(config.get("language", {}).get("code") or piper_config.espeak_voice),
            phonemizer=PiperVoice(session=None, config=piper_config),
            schedule=schedule or ChunkSchedule(),
            noise_scale=float(inference.get("noise_scale", 0.667)),
            length_scale=float(inference.get("length_scale", 1.0)),
            noise_w=float(inference.get("noise_w", 0.8)),
            speaker_id=0 if piper_config.num_speakers > 1 else None,
            load_seconds=timings,
        )
        timed(timings, "phonemizer", lambda: voice.phoneme_ids(PROBE_TEXT))
        digest = timed(timings, "hash", lambda: _read(file_sha256, files.model))
        options = session_options(threads)
        try:
            split = timed(timings, "split", lambda: load_or_split(files.model, cache_dir, digest))
            try:
                voice.stages = voice._open_stages(split, options, timings)
            except GraphSplitError:
                raise
            except Exception as exc:  # a damaged cache entry: split again, once
                if not split.from_cache:
                    raise
                log.warning(
                    "engine: %s: cached split unusable (%s); splitting again", files.name, exc
                )
                split = load_or_split(files.model, cache_dir, digest, refresh=True)
                voice.stages = voice._open_stages(split, options, timings)
            try:
                voice._verify(timings, against_original=not split.from_cache, options=options)
            except _VerifyError as exc:  # a voice with a wider receptive field: try once more
                log.warning("engine: %s: %s; retrying with doubled context", files.name, exc)
                voice.schedule = replace(
                    voice.schedule,
                    vocoder_context=2 * voice.schedule.vocoder_context,
                    flow_context=2 * voice.schedule.flow_context,
                )
                voice._verify(timings, against_original=False, options=options)
            fallback = None
        except (GraphSplitError, _VerifyError) as exc:
            fallback = str(exc)
        except Exception as exc:  # corrupt model files surface here, from onnx or onnxruntime
            raise VoiceLoadError(f"{files.model}: cannot load voice model: {exc}") from exc
        try:
            if fallback is not None:
                voice._fall_back(fallback, options, timings)
            timed(timings, "warm-up", voice._warm_up)
        except Exception as exc:  # not a model onnxruntime can run as a Piper voice
            raise VoiceLoadError(f"{files.model}: cannot load voice model: {exc}") from exc
        return voice

    def _open_stages(
        self, split: SplitFiles, options: ort.SessionOptions, timings: dict[str, float]
    ) -> _Stages:
        def open_session(path: Path) -> ort.InferenceSession:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        frontend = timed(timings, "frontend session", lambda: open_session(split.frontend))
        flow = timed(timings, "flow session", lambda: open_session(split.flow))
        vocoder = timed(timings, "vocoder session", lambda: open_session(split.vocoder))
        stages = _Stages(frontend, flow, vocoder, split, frozenset())
        short, long = self._probe_ids()[:12], self._probe_ids()
        a = dict(
            zip(split.frontend_outputs, frontend.run(None, self._inputs(short, 0.0)), strict=True)
        )
        b = dict(
            zip(split.frontend_outputs, frontend.run(None, self._inputs(long, 0.0)), strict=True)
        )
        stages.time_axis = frozenset(n for n in a if a[n].shape[-1] != b[n].shape[-1])
        if not set(split.flow_inputs) & stages.time_axis:
            raise GraphSplitError("no frontend output varies with the text length")
        return stages

    def _fall_back(
        self, reason: str, options: ort.SessionOptions, timings: dict[str, float]
    ) -> None:
        log.warning("engine: voice %s falls back to whole-sentence decoding: %s", self.name, reason)
        self.fallback_reason = reason
        self.stages = None
        self.full = timed(
            timings,
            "full session",
            lambda: ort.InferenceSession(
                str(self.files.model), options, providers=["CPUExecutionProvider"]
            ),
        )

    def _verify(
        self, timings: dict[str, float], *, against_original: bool, options: ort.SessionOptions
    ) -> None:
        """Chunked decoding of the probe must match one-shot decoding (noise off)."""

        def check() -> None:
            ids = self._probe_ids()
            whole, frames = self._decode_whole_split(ids)
            if frames <= 0 or len(whole) % frames:
                raise _VerifyError(f"{len(whole)} samples is not a whole number of {frames} frames")
            self.hop = len(whole) // frames
            small = replace(self.schedule, first_frames=8, max_frames=32, min_tail_frames=0)
            chunked = np.concatenate(list(self._decode_chunked(ids, 1.0, noise=False, plan=small)))
            diff = float(np.max(np.abs(chunked - whole))) if len(chunked) == len(whole) else np.inf
            if against_original:  # a fresh split: also compare with the untouched graph
                original = ort.InferenceSession(
                    str(self.files.model), options, providers=["CPUExecutionProvider"]
                )
                ref = original.run(None, self._inputs(ids, 0.0, noise=False))[0].reshape(-1)
                diff = max(
                    diff, float(np.max(np.abs(ref - whole))) if len(ref) == len(whole) else np.inf
                )
            self.verify_max_diff = diff
            if not diff <= MAX_ABS_DIFF:
                raise _VerifyError(f"chunked output differs from one-shot by {diff:.3g}")

        timed(timings, "verify", check)

    def _warm_up(self) -> None:
        """Run the phonemizer and every stage, the latter at the largest window shapes.

        onnxruntime grows its memory arena on the first run of a larger shape;
        running the biggest flow and vocoder windows once means no request
        pays for that later.
        """
        for _ in self.synthesize("Hi."):
            pass
        self._run_largest(lambda: None)

    def warm(self, copies: int) -> None:
        """Run the largest windows on ``copies`` threads at once (see :mod:`engine.warm`)."""
        run_together(self._run_largest, copies)

    def _run_largest(self, sync: Sync) -> None:
        """Frontend on the probe, then flow and vocoder at their widest windows; ``sync`` first."""
        sync()
        if self.stages is None:
            for _ in self.synthesize(PROBE_TEXT):
                pass
            return
        s, plan = self.stages, self.schedule
        latents = self._frontend(self._probe_ids(), 1.0, noise=False)
        sync()
        frames = plan.max_frames + 2 * plan.flow_context
        tiled = {
            n: np.take(v, np.arange(frames) % v.shape[-1], axis=-1) if n in s.time_axis else v
            for n, v in latents.items()
        }
        flowed = s.flow.run(None, {n: tiled[n] for n in s.files.flow_inputs})
        named = {**tiled, **dict(zip(s.files.flow_outputs, flowed, strict=True))}
        width = plan.max_frames + 2 * plan.vocoder_context
        sync()
        s.vocoder.run(
            None,
            {
                n: _window(named[n], n in s.time_axis or n in s.files.flow_outputs, 0, width)
                for n in s.files.vocoder_inputs
            },
        )

    # --------------------------------------------------------------- synthesis
    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme id sequences, one per sentence as the phonemizer sees it."""
        return [self.phonemizer.phonemes_to_ids(p) for p in self.phonemizer.phonemize(text) if p]

    def synthesize(self, text: str, speed: float = 1.0) -> Generator[Float32Array, None, None]:
        """Float32 mono chunks at ``sample_rate`` for ``text`` (one segment)."""
        for ids in self.phoneme_ids(text):
            yield from self.synthesize_ids(ids, speed)

    def synthesize_ids(self, ids: list[int], speed: float) -> Iterator[Float32Array]:
        """Chunks of audio for one phoneme id sequence; ``speed`` > 1 is faster."""
        if self.stages is None:
            yield self._run_full(ids, speed)
        else:
            yield from self._decode_chunked(ids, speed, noise=True)

    def _inputs(self, ids: list[int], speed: float, *, noise: bool = True) -> dict[str, Any]:
        length_scale = self.length_scale / speed if speed > 0 else self.length_scale
        scales = (
            [self.noise_scale, length_scale, self.noise_w] if noise else [0.0, length_scale, 0.0]
        )
        inputs: dict[str, Any] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(scales, dtype=np.float32),
        }
        if self.speaker_id is not None:
            inputs["sid"] = np.array([self.speaker_id], dtype=np.int64)
        return inputs

    def _run_full(self, ids: list[int], speed: float) -> Float32Array:
        assert self.full is not None
        audio = self.full.run(None, self._inputs(ids, speed))[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def _frontend(self, ids: list[int], speed: float, noise: bool) -> dict[str, Any]:
        assert self.stages is not None
        s = self.stages
        values = s.frontend.run(None, self._inputs(ids, speed if speed > 0 else 1.0, noise=noise))
        return dict(zip(s.files.frontend_outputs, values, strict=True))

    def _decode_whole_split(self, ids: list[int]) -> tuple[Float32Array, int]:
        """One-shot decode through the split stages; returns audio and latent frames."""
        assert self.stages is not None
        s = self.stages
        latents = self._frontend(ids, 1.0, noise=False)
        frames = int(next(latents[n] for n in s.files.flow_inputs if n in s.time_axis).shape[-1])
        flowed = s.flow.run(None, {n: latents[n] for n in s.files.flow_inputs})
        named = {**latents, **dict(zip(s.files.flow_outputs, flowed, strict=True))}
        audio = s.vocoder.run(None, {n: named[n] for n in s.files.vocoder_inputs})[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1), frames

    def _decode_chunked(
        self, ids: list[int], speed: float, *, noise: bool, plan: ChunkSchedule | None = None
    ) -> Iterator[Float32Array]:
        """Frontend once, then flow and vocoder window by window (see ``chunking``)."""
        assert self.stages is not None
        s, plan = self.stages, plan or self.schedule
        latents = self._frontend(ids, speed, noise)
        timed = [n for n in s.files.flow_inputs if n in s.time_axis]
        total = int(latents[timed[0]].shape[-1])
        flowed: dict[str, np.ndarray[Any, Any]] = {}
        progress = FlowProgress(total, plan.flow_context, min_frames=plan.flow_ahead_frames)
        for start, end in plan.chunks(total):
            lo, hi = plan.vocoder_window(start, end, total)
            for f_lo, f_hi, keep_from, keep_to in progress.windows_until(hi):
                feed = {
                    n: _window(latents[n], n in s.time_axis, f_lo, f_hi)
                    for n in s.files.flow_inputs
                }
                for name, value in zip(s.files.flow_outputs, s.flow.run(None, feed), strict=True):
                    if name not in flowed:
                        flowed[name] = np.empty((*value.shape[:-1], total), dtype=value.dtype)
                    flowed[name][..., keep_from:keep_to] = value[
                        ..., keep_from - f_lo : keep_to - f_lo
                    ]
            feed = {
                n: flowed[n][..., lo:hi]
                if n in flowed
                else _window(latents[n], n in s.time_axis, lo, hi)
                for n in s.files.vocoder_inputs
            }
            audio = np.asarray(s.vocoder.run(None, feed)[0], dtype=np.float32).reshape(-1)
            yield audio[(start - lo) * self.hop : (end - lo) * self.hop]

    def _probe_ids(self) -> list[int]:
        ids = [i for sentence in self.phoneme_ids(PROBE_TEXT) for i in sentence]
        if len(ids) < 64:  # a phonemizer that cannot read English: any valid ids will do
            ids = [v[0] for v in self.phonemizer.config.phoneme_id_map.values()][:200]
        return ids


class _VerifyError(RuntimeError):
    pass


def _window(value: np.ndarray[Any, Any], timed: bool, lo: int, hi: int) -> np.ndarray[Any, Any]:
    return value[..., lo:hi] if timed else value


def _read(fn: Callable[[Path], str], path: Path) -> str:
    try:
        return fn(path)
    except OSError as exc:
        raise VoiceLoadError(f"{path}: cannot read voice model: {exc}") from exc
