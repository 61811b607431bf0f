"""The engine: preloaded voices, text in, audio chunks out.

``Engine.load()`` is the preload manager. It loads and warms every voice
(phonemizer, onnxruntime sessions, split-graph cache; for transformers VITS
voices tokenizer, weights and ONNX export) and logs one line per component
with its load time. Piper voices are ``x.onnx`` files; transformers VITS
voices (MMS-TTS) are checkpoint folders, loaded through
``engine.vits_voice`` only when there is one, so torch and transformers are
imported (and needed) only then. ``stream()`` is a synchronous generator: the
engine never starts threads of its own; concurrency is the server's job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine import warm
from engine.chunking import ChunkSchedule
from engine.piper_voice import Float32Array, PiperStreamingVoice
from engine.split_cache import default_cache_dir
from engine.splitter import split_text
from engine.vits_files import find_vits_voices, looks_like_checkpoint, vits_files
from engine.voice_files import (
    VoiceFiles,
    VoiceLoadError,
    default_voice_files,
    find_voices,
    voice_files,
)

log = logging.getLogger("engine")

SENTENCE_PAUSE_MS = 200.0
CLAUSE_PAUSE_MS = 80.0
SENTENCE_END = tuple(".!?…。！？；;\"'”’)]」』")
MIN_SPEED, MAX_SPEED = 0.5, 2.0


def pause_after_ms(segment: str) -> float:
    """Silence to insert after ``segment``: longer after a sentence than a clause."""
    return SENTENCE_PAUSE_MS if segment.rstrip().endswith(SENTENCE_END) else CLAUSE_PAUSE_MS


class Voice(Protocol):
    """What the engine and the server need of a loaded voice, whatever its backend."""

    @property
    def name(self) -> str: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def language(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def streaming(self) -> bool: ...
    @property
    def hop(self) -> int: ...
    @property
    def schedule(self) -> ChunkSchedule: ...
    @property
    def fallback_reason(self) -> str | None: ...
    @property
    def load_seconds(self) -> dict[str, float]: ...
    @property
    def verify_max_diff(self) -> float | None: ...

    def synthesize(self, text: str, speed: float = 1.0) -> Generator[Float32Array, None, None]:
        """Float32 mono chunks at ``sample_rate`` for one segment of text (closable)."""
        ...

    def warm(self, copies: int) -> None:
        """Run the widest windows ``copies`` at once, growing memory to that (see ``warm``)."""
        ...


@dataclass(frozen=True)
class SpeechChunk:
    """A piece of synthesized audio: float32 mono samples in [-1, 1]."""

    audio: Float32Array
    sample_rate: int
    segment_index: int
    segment_text: str

    @property
    def pcm16(self) -> np.ndarray[tuple[int], np.dtype[np.int16]]:
        """The same samples as little-endian int16."""
        return np.asarray(np.rint(np.clip(self.audio, -1.0, 1.0) * 32767.0), dtype=np.int16)

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.audio) / self.sample_rate


class Engine:
    """A set of loaded voices; create with :meth:`load`. Thread-safe for synthesis."""

    def __init__(self, voices: dict[str, Voice], default: str, errors: dict[str, str]) -> None:
        if default not in voices:
            raise ValueError(f"default voice {default!r} is not among the loaded voices")
        self.voices = voices
        self.default_voice = default
        self.voice_errors = errors

    @classmethod
    def load(
        cls,
        voice: str | Path | None = None,
        *,
        voices_dir: str | Path | None = None,
        include_default: bool = True,
        threads: int = 1,
        cache_dir: str | Path | None = None,
        schedule: ChunkSchedule | None = None,
        concurrency: int = 1,
    ) -> Engine:
        """Load and warm voices; return when the first request will be fast.

        ``voice`` is a Piper ``.onnx`` file or a transformers VITS checkpoint
        folder (either becomes the default voice), or another folder (treated
        as ``voices_dir``). Every voice in ``voices_dir`` is loaded: the
        ``*.onnx`` Piper voices, then the subfolders that hold checkpoint
        files; one that fails (half-installed, corrupt) is logged and listed
        in ``voice_errors`` while the others serve. An explicitly named
        ``voice`` that fails raises :class:`VoiceLoadError`. The bundled voice
        is loaded too unless ``include_default`` is false; it is the default
        voice unless ``voice`` names another. ``concurrency`` is how many
        synthesis calls the caller will run at once (the server's engine
        workers): each voice is warmed with that many at once, so that its
        memory is at working size before the first request.
        """
        start = time.perf_counter()
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if voice is not None and Path(voice).is_dir() and not looks_like_checkpoint(Path(voice)):
            voices_dir, voice = voice, None
        # (model path, must succeed); the first that loads is the default voice
        wanted: list[tuple[Path, bool]] = []
        if voice is not None:
            wanted.append((Path(voice), True))
        if include_default or (voice is None and voices_dir is None):
            wanted.append((default_voice_files().model, voice is None and voices_dir is None))
        if voices_dir is not None:
            found = find_voices(Path(voices_dir)) + find_vits_voices(Path(voices_dir))
            if not found:
                log.warning(
                    "engine: no voices in %s (looked for *.onnx with *.onnx.json beside it,"
                    " and checkpoint folders)",
                    voices_dir,
                )
            wanted += [(p, False) for p in found]
        loaded: dict[str, Voice] = {}
        errors: dict[str, str] = {}
        for model, required in wanted:
            name = model.name.removesuffix(".onnx")
            if name in loaded:
                continue
            try:
                if model.is_dir():
                    loaded[name] = _load_vits(model, cache, threads, schedule)
                else:
                    loaded[name] = _load_one(voice_files(model), cache, threads, schedule)
            except VoiceLoadError as exc:
                if required:
                    raise
                log.error("engine: voice %s not loaded: %s", name, exc)
                errors[name] = str(exc)
        if not loaded:
            raise VoiceLoadError("no voice could be loaded: " + "; ".join(errors.values()))
        if concurrency > 1:
            for name, loaded_voice in loaded.items():
                began = time.perf_counter()
                for _ in range(warm.ROUNDS):
                    loaded_voice.warm(warm.copies_for(concurrency))
                log.info(
                    "engine: %s warmed for %d calls at once in %.2f s",
                    name,
                    concurrency,
                    time.perf_counter() - began,
                )
        default = next(iter(loaded))
        log.info("engine: ready, %d voice(s) in %.2f s", len(loaded), time.perf_counter() - start)
        return cls(loaded, default, errors)

    def voice(self, name: str | None = None) -> Voice:
        """The named voice (default if ``None``); ``KeyError`` if unknown."""
        return self.voices[name or self.default_voice]

    def stream(
        self, text: str, *, speed: float = 1.0, voice: str | None = None
    ) -> Iterator[SpeechChunk]:
        """Split ``text`` into segments and yield audio chunks as they are decoded.

        A pause of silence follows each segment but the last. ``speed`` is
        clamped to [0.5, 2.0]; > 1 speaks faster.
        """
        v = self.voice(voice)
        speed = min(MAX_SPEED, max(MIN_SPEED, speed))
        segments = [s for s in split_text(text) if s.strip()]
        for index, segment in enumerate(segments):
            for audio in v.synthesize(segment.strip(), speed):
                yield SpeechChunk(audio, v.sample_rate, index, segment)
            if index + 1 < len(segments):
                pause = np.zeros(int(v.sample_rate * pause_after_ms(segment) / 1000), np.float32)
                yield SpeechChunk(pause, v.sample_rate, index, segment)


def _load_one(
    files: VoiceFiles, cache: Path, threads: int, schedule: ChunkSchedule | None
) -> PiperStreamingVoice:
    start = time.perf_counter()
    voice = PiperStreamingVoice.load(files, cache_dir=cache, threads=threads, schedule=schedule)
    _log_loaded(voice, start)
    return voice


def _load_vits(folder: Path, cache: Path, threads: int, schedule: ChunkSchedule | None) -> Voice:
    """Load a transformers VITS checkpoint folder, importing the backend on first use."""
    start = time.perf_counter()
    files = vits_files(folder)  # names missing files before paying for the imports
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only: never download
    try:
        from engine.vits_voice import VitsStreamingVoice
    except ImportError as exc:
        raise VoiceLoadError(
            f"{folder}: transformers VITS voices need torch and transformers "
            f"(pip install -r requirements-vits.txt): {exc}"
        ) from exc
    imported = time.perf_counter() - start
    if imported > 0.01:
        log.info("engine: %s torch + transformers import %.2f s", files.name, imported)
    voice = VitsStreamingVoice.load(files, cache_dir=cache, threads=threads, schedule=schedule)
    _log_loaded(voice, start)
    return voice


def _log_loaded(voice: Voice, start: float) -> None:
    for component, seconds in voice.load_seconds.items():
        log.info("engine: %s %s %.2f s", voice.name, component, seconds)
    mode = "chunked" if voice.streaming else f"whole-sentence ({voice.fallback_reason})"
    log.info(
        "engine: %s loaded in %.2f s, %s, %d Hz, decoding %s, verify max diff %s",
        voice.name,
        time.perf_counter() - start,
        voice.backend,
        voice.sample_rate,
        mode,
        voice.verify_max_diff,
    )
