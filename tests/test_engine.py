"""Tests for engine.engine: preloading voices, voice errors, streaming speech chunks."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_voice import build_tiny_voice

from engine import Engine, SpeechChunk, VoiceLoadError
from engine.engine import CLAUSE_PAUSE_MS, SENTENCE_PAUSE_MS, pause_after_ms

DEFAULT = "en_US-joe-medium"
LONG = (
    "When the evening train finally pulled into the small mountain station, the "
    "passengers, tired from a long day of travel through valleys, tunnels and endless "
    "pine forests, gathered their bags and stepped out into the cold, clear air."
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def engine(cache: Path) -> Engine:
    return Engine.load(cache_dir=cache)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_voice(tmp_path_factory.mktemp("tiny"))


def _add_voice(folder: Path, name: str, data: bytes, config_from: Path | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"{name}.onnx"
    model.write_bytes(data)
    if config_from is not None:
        shutil.copy(config_from.with_name(config_from.name + ".json"), f"{model}.json")
    return model


def _timed_stream(engine: Engine, text: str) -> list[tuple[float, SpeechChunk]]:
    start = time.perf_counter()
    return [(time.perf_counter() - start, chunk) for chunk in engine.stream(text)]


# ------------------------------------------------------------------ default voice
def test_default_engine_has_the_bundled_voice(engine: Engine) -> None:
    assert list(engine.voices) == [DEFAULT]
    assert engine.default_voice == DEFAULT
    assert engine.voice_errors == {}
    assert engine.voice().streaming
    with pytest.raises(KeyError):
        engine.voice("nobody")


def test_stream_yields_float32_chunks_per_segment(engine: Engine) -> None:
    chunks = list(engine.stream("Hello there. How are you?"))
    assert all(isinstance(c, SpeechChunk) for c in chunks)
    assert all(c.sample_rate == 22050 for c in chunks)
    assert all(c.audio.dtype == np.float32 and c.audio.ndim == 1 for c in chunks)
    indices = [c.segment_index for c in chunks]
    assert indices == sorted(indices)
    assert sorted(set(indices)) == [0, 1]
    assert {c.segment_text for c in chunks if c.segment_index == 0} == {"Hello there. "}
    assert {c.segment_text for c in chunks if c.segment_index == 1} == {"How are you?"}
    # The pause closes segment 0: the last chunk of that segment is silence.
    pause = [c for c in chunks if c.segment_index == 0][-1]
    assert len(pause.audio) == round(22050 * SENTENCE_PAUSE_MS / 1000)
    assert not pause.audio.any()
    assert chunks[-1].audio.any()  # no pause after the last segment
    audio = np.concatenate([c.audio for c in chunks])
    assert np.all(np.abs(audio) <= 1.0)


def test_first_chunk_arrives_before_the_sentence_is_done(engine: Engine) -> None:
    timed = _timed_stream(engine, LONG)
    first_segment = [c for _, c in timed if c.segment_index == 0 and c.audio.any()]
    assert len(first_segment) > 1
    plan = engine.voice().schedule
    assert len(timed[0][1].audio) == plan.first_frames * engine.voice().hop
    first_at, total = timed[0][0], timed[-1][0]
    assert first_at < 0.5 * total


def test_stream_of_blank_text_is_empty(engine: Engine) -> None:
    assert list(engine.stream("")) == []
    assert list(engine.stream("   \n ")) == []


def test_speech_chunk_pcm16_and_duration() -> None:
    audio = np.array([0.0, 0.5, -1.0, 2.0, -2.0], dtype=np.float32)
    chunk = SpeechChunk(audio, 1000, 0, "x")
    assert chunk.pcm16.tolist() == [0, 16384, -32767, 32767, -32767]
    assert chunk.duration_ms == pytest.approx(5.0)


def test_pause_is_longer_after_a_sentence_than_a_clause() -> None:
    assert pause_after_ms("Hello there. ") == SENTENCE_PAUSE_MS
    assert pause_after_ms("Is it? ") == SENTENCE_PAUSE_MS
    assert pause_after_ms("When the train came, ") == CLAUSE_PAUSE_MS


def test_first_stream_after_load_is_warm(cache: Path, engine: Engine) -> None:
    """Loose check of the warm-up: the first request is not much slower than later ones."""
    fresh = Engine.load(cache_dir=cache)
    text = "Warm voices answer quickly, even the first time."
    first = _timed_stream(fresh, text)[0][0]
    later = min(_timed_stream(fresh, text)[0][0] for _ in range(3))
    assert first < 3 * later + 0.25


# ------------------------------------------------------------------ voices folders
def test_explicit_voice_becomes_the_default(tiny_model: Path, cache: Path) -> None:
    engine = Engine.load(tiny_model, include_default=False, cache_dir=cache)
    assert list(engine.voices) == ["tiny"]
    chunks = list(engine.stream("Hello there. How are you?"))
    assert {c.sample_rate for c in chunks} == {16000}
    assert sorted({c.segment_index for c in chunks}) == [0, 1]


def test_missing_explicit_voice_raises_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.onnx"
    with pytest.raises(VoiceLoadError, match=re.escape(str(missing))):
        Engine.load(missing, cache_dir=tmp_path / "cache")


def test_folder_as_voice_is_a_voices_folder(tiny_model: Path, tmp_path: Path) -> None:
    engine = Engine.load(tiny_model.parent, include_default=False, cache_dir=tmp_path)
    assert list(engine.voices) == ["tiny"]


def test_missing_voices_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(VoiceLoadError, match="voices folder not found"):
        Engine.load(voices_dir=tmp_path / "absent", cache_dir=tmp_path)


def test_an_empty_voices_folder_is_a_warning_and_the_default_serves(
    cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "voices"
    empty.mkdir()
    with caplog.at_level("WARNING", logger="engine"):
        engine = Engine.load(voices_dir=empty, cache_dir=cache)
    assert list(engine.voices) == [DEFAULT]
    assert any(f"no voices in {empty}" in r.getMessage() for r in caplog.records)


def test_model_without_config_in_folder_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    """A half-installed voice (no .onnx.json) is reported in voice_errors; the others serve."""
    folder = tmp_path / "voices"
    _add_voice(folder, "tiny", tiny_model.read_bytes(), tiny_model)
    _add_voice(folder, "garbage", b"\x00not onnx" * 16, tiny_model)
    lonely = _add_voice(folder, "lonely", tiny_model.read_bytes(), None)
    engine = Engine.load(voices_dir=folder, include_default=False, cache_dir=tmp_path / "cache")
    assert list(engine.voices) == ["tiny"]
    assert engine.voice_errors["lonely"].startswith(f"{lonely}: its config lonely.onnx.json")
    assert "garbage" in engine.voice_errors


def test_broken_voice_is_reported_and_others_serve(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    _add_voice(folder, "tiny", tiny_model.read_bytes(), tiny_model)
    garbage = _add_voice(folder, "garbage", b"\x00not onnx" * 16, tiny_model)
    engine = Engine.load(voices_dir=folder, include_default=False, cache_dir=tmp_path / "cache")
    assert list(engine.voices) == ["tiny"]
    assert engine.default_voice == "tiny"
    assert list(engine.voice_errors) == ["garbage"]
    assert str(garbage) in engine.voice_errors["garbage"]
    assert list(engine.stream("Still here."))


def test_only_broken_voice_in_folder_keeps_the_default(
    tiny_model: Path, tmp_path: Path, cache: Path, engine: Engine
) -> None:
    folder = tmp_path / "voices"
    garbage = _add_voice(folder, "garbage", b"\x00not onnx" * 16, tiny_model)
    loaded = Engine.load(voices_dir=folder, cache_dir=cache)
    assert list(loaded.voices) == [DEFAULT]
    assert loaded.default_voice == DEFAULT
    assert str(garbage) in loaded.voice_errors["garbage"]
    assert "cannot load voice model" in loaded.voice_errors["garbage"]


def test_folder_of_only_broken_voices_raises(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    garbage = _add_voice(folder, "garbage", b"\x00not onnx" * 16, tiny_model)
    with pytest.raises(VoiceLoadError, match=re.escape(str(garbage))):
        Engine.load(voices_dir=folder, include_default=False, cache_dir=tmp_path / "cache")


def test_empty_model_in_folder_is_reported(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "voices"
    _add_voice(folder, "tiny", tiny_model.read_bytes(), tiny_model)
    empty = _add_voice(folder, "empty", b"", tiny_model)
    engine = Engine.load(voices_dir=folder, include_default=False, cache_dir=tmp_path / "cache")
    assert list(engine.voices) == ["tiny"]
    assert str(empty) in engine.voice_errors["empty"]
