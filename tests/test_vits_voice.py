"""Tests for the transformers VITS backend (engine.vits_*): load, exact chunks, errors.

Every check runs on tiny random-weight checkpoints that ``engine.vits_tiny``
writes with ``save_pretrained``, loaded through the real loading path
(``Engine.load`` / ``VitsStreamingVoice.load``), offline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not IN_CI:  # a light dev install skips; CI must have requirements-vits.txt installed
    pytest.importorskip("torch")
    pytest.importorskip("transformers")

import torch
from transformers.models.vits.configuration_vits import VitsConfig

from engine import Engine, VoiceLoadError
from engine.chunking import ChunkSchedule
from engine.vits_files import find_vits_voices, vits_files
from engine.vits_model import receptive_fields
from engine.vits_tiny import build_tiny_vits, tiny_config
from engine.vits_voice import BACKEND, MAX_ABS_DIFF, VitsStreamingVoice

NAME = "mms-tts-tiny"
COMPONENTS = {"tokenizer", "weights", "hash", "export", "sessions", "verify", "warm-up"}
SENTENCES = {
    "short": "Hi.",
    "medium": "The quick brown fox jumps over the lazy dog.",
    "long": (
        "When the evening train finally pulled into the small mountain station, the "
        "passengers gathered their bags and stepped out into the cold, clear air"
    ),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vits(tmp_path_factory.mktemp("voices") / NAME)


@pytest.fixture(scope="module")
def engine(tiny: Path, cache: Path) -> Engine:
    return Engine.load(tiny, include_default=False, cache_dir=cache)


@pytest.fixture(scope="module")
def voice(engine: Engine) -> VitsStreamingVoice:
    v = engine.voice(NAME)
    assert isinstance(v, VitsStreamingVoice)
    return v


@pytest.fixture(scope="module")
def torch_voice(tiny: Path, cache: Path) -> VitsStreamingVoice:
    return VitsStreamingVoice.load(vits_files(tiny), cache_dir=cache, runtime="torch")


def _ids(voice: VitsStreamingVoice, text: str) -> list[int]:
    return voice.text.ids(text)


def _chunked(
    voice: VitsStreamingVoice, ids: list[int], speed: float = 1.0, plan: ChunkSchedule | None = None
) -> np.ndarray:
    return np.concatenate(list(voice._decode_chunked(ids, speed, noise=False, plan=plan)))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------ loading
def test_folder_loads_as_the_default_voice(engine: Engine, voice: VitsStreamingVoice) -> None:
    assert list(engine.voices) == [NAME]
    assert engine.default_voice == NAME
    assert voice.backend == BACKEND == "transformers-vits"
    assert voice.sample_rate == 16000
    assert voice.language == "eng"
    assert voice.streaming and voice.fallback_reason is None
    assert voice.runtime == "onnxruntime"
    assert voice.hop == 64
    assert voice.verify_max_diff is not None and voice.verify_max_diff <= MAX_ABS_DIFF
    assert set(voice.load_seconds) == COMPONENTS
    assert (voice.schedule.flow_context, voice.schedule.vocoder_context) == (8, 6)


def test_load_logs_each_component(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engine")
    Engine.load(tiny, include_default=False, cache_dir=tmp_path)
    for component in COMPONENTS:
        assert re.search(rf"engine: {NAME} {component} \d+\.\d\d s", caplog.text), component
    assert f"engine: {NAME} loaded in" in caplog.text
    assert "transformers-vits, 16000 Hz, decoding chunked" in caplog.text


def test_first_request_after_load_is_warm(tiny: Path, cache: Path) -> None:
    """Loose check of the warm-up: the first request is not much slower than later ones."""
    fresh = Engine.load(tiny, include_default=False, cache_dir=cache)

    def first_chunk_s() -> float:
        start = time.perf_counter()
        next(fresh.stream(SENTENCES["medium"]))
        return time.perf_counter() - start

    first = first_chunk_s()
    later = min(first_chunk_s() for _ in range(3))
    assert first < 3 * later + 0.25


def test_receptive_fields_from_config() -> None:
    assert receptive_fields(VitsConfig()) == (32, 14)  # MMS-TTS
    assert receptive_fields(tiny_config()) == (8, 6)


@pytest.mark.parametrize("stage", ["flow", "decoder"])
def test_receptive_fields_bound_the_reach_of_one_frame(
    torch_voice: VitsStreamingVoice, stage: str
) -> None:
    """Changing one latent frame changes output only within the derived reach, and
    (the derivation is tight) reaches at least one frame short of it."""
    stages, hop = torch_voice.stages, torch_voice.hop
    flow_reach, decoder_reach = receptive_fields(stages.config)
    reach = flow_reach if stage == "flow" else decoder_reach
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn((1, int(stages.config.flow_size), 60), generator=generator) * 0.3
    bumped = latents.clone()
    bumped[..., 30] += 1.0

    def run(x: torch.Tensor) -> np.ndarray:
        if stage == "flow":
            return np.asarray(stages.flow(x, None).numpy()[0])  # channels x frames
        return stages.decoder(x, None)[None, :]  # 1 x samples

    changed = np.flatnonzero(np.abs(run(bumped) - run(latents)).max(axis=0) > 0)
    frames = changed // (1 if stage == "flow" else hop)
    assert frames.min() >= 30 - reach and frames.max() <= 30 + reach
    assert frames.max() - 30 >= reach - 1 and 30 - frames.min() >= reach - 1


def test_second_load_reuses_the_export(tiny: Path, cache: Path, voice: VitsStreamingVoice) -> None:
    again = VitsStreamingVoice.load(vits_files(tiny), cache_dir=cache)
    entries = [p for p in cache.iterdir() if p.name.startswith("vits-")]
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == [
        "decoder.onnx",
        "flow.onnx",
        "meta.json",
    ]
    assert again.streaming and again.runtime == "onnxruntime"
    ids = _ids(voice, SENTENCES["medium"])
    np.testing.assert_array_equal(_chunked(again, ids), _chunked(voice, ids))


def test_damaged_export_is_rebuilt(tiny: Path, tmp_path: Path) -> None:
    first = VitsStreamingVoice.load(vits_files(tiny), cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    (entry / "decoder.onnx").write_bytes(b"not onnx")
    again = VitsStreamingVoice.load(vits_files(tiny), cache_dir=tmp_path)
    assert again.streaming and again.runtime == "onnxruntime"
    assert (entry / "decoder.onnx").stat().st_size > 1000
    ids = _ids(first, SENTENCES["short"])
    np.testing.assert_array_equal(_chunked(again, ids), _chunked(first, ids))


# ------------------------------------------------------------------ exact chunks
@pytest.mark.parametrize("name", list(SENTENCES))
@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_chunked_equals_model_forward(
    voice: VitsStreamingVoice, torch_voice: VitsStreamingVoice, name: str, runtime: str
) -> None:
    """Joined chunks equal ``VitsModel.forward(...).waveform`` (noise off)."""
    v = voice if runtime == "onnxruntime" else torch_voice
    ids = _ids(v, SENTENCES[name])
    reference = v.stages.one_shot(ids, v.speaking_rate)
    chunks = list(v._decode_chunked(ids, 1.0, noise=False))
    frames = len(reference) // v.hop
    assert len(reference) == frames * v.hop
    assert [len(c) for c in chunks] == [(e - s) * v.hop for s, e in v.schedule.chunks(frames)]
    chunked = np.concatenate(chunks)
    assert chunked.shape == reference.shape
    assert float(np.max(np.abs(chunked - reference))) <= MAX_ABS_DIFF
    if name == "long":
        assert len(chunks) >= 3


@pytest.mark.parametrize(
    "plan",
    [
        ChunkSchedule(first_frames=1, growth=1.0, max_frames=1, min_tail_frames=0),
        ChunkSchedule(first_frames=3, growth=2.0, max_frames=17, min_tail_frames=5),
        ChunkSchedule(first_frames=7, growth=1.3, max_frames=40, flow_ahead_frames=1),
    ],
    ids=["every-frame", "growing", "flow-behind"],
)
def test_chunking_does_not_change_the_audio(voice: VitsStreamingVoice, plan: ChunkSchedule) -> None:
    s = voice.schedule
    plan = replace(plan, vocoder_context=s.vocoder_context, flow_context=s.flow_context)
    ids = _ids(voice, SENTENCES["medium"])
    whole = voice._decode_whole(ids, 1.0, noise=False)
    assert float(np.max(np.abs(_chunked(voice, ids, plan=plan) - whole))) <= MAX_ABS_DIFF


def test_speed_follows_the_speaking_rate(voice: VitsStreamingVoice) -> None:
    """``speed`` multiplies the model's speaking rate: lengths match ``forward``'s."""
    ids = _ids(voice, SENTENCES["long"])
    lengths = {}
    for speed in (0.5, 1.0, 2.0):
        lengths[speed] = len(_chunked(voice, ids, speed))
        assert lengths[speed] == len(voice.stages.one_shot(ids, voice.speaking_rate * speed))
    # Each token's duration is rounded up to whole frames, so not exactly 2x / 0.5x.
    assert 1.6 <= lengths[0.5] / lengths[1.0] <= 2.1, lengths
    assert 0.45 <= lengths[2.0] / lengths[1.0] <= 0.7, lengths


def test_synthesize_yields_float32_chunks_with_noise(voice: VitsStreamingVoice) -> None:
    chunks = list(voice.synthesize(SENTENCES["long"]))
    assert len(chunks) >= 3
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert len(chunks[0]) == voice.schedule.first_frames * voice.hop
    audio = np.concatenate(chunks)
    assert np.all(np.isfinite(audio)) and float(np.max(np.abs(audio))) <= 1.0 + 1e-6
    assert float(np.max(np.abs(audio))) > 0.0


def test_text_with_nothing_speakable_yields_nothing(voice: VitsStreamingVoice) -> None:
    assert list(voice.synthesize("123 ?! 456")) == []
    assert list(voice.synthesize("")) == []


def test_chunks_pulled_from_alternating_threads_are_identical(voice: VitsStreamingVoice) -> None:
    """The server resumes a voice's generator on any worker thread (inference mode
    is thread-local and must never be held across a yield)."""
    ids = _ids(voice, SENTENCES["long"])
    expected = list(voice._decode_chunked(ids, 1.0, noise=False))
    chunks: Iterator[np.ndarray] = voice._decode_chunked(ids, 1.0, noise=False)
    got: list[np.ndarray] = []

    def pull() -> None:
        got.append(next(chunks))

    for _ in expected:
        worker = threading.Thread(target=pull)
        worker.start()
        worker.join(30)
    assert next(chunks, None) is None
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    with torch.no_grad():
        assert not torch.is_inference_mode_enabled()


def test_multi_speaker_checkpoint_uses_speaker_zero(tmp_path: Path) -> None:
    folder = build_tiny_vits(tmp_path / "multi", num_speakers=3)
    voice = VitsStreamingVoice.load(vits_files(folder), cache_dir=tmp_path / "cache")
    assert voice.streaming and voice.stages.speaker_id == 0
    ids = _ids(voice, SENTENCES["medium"])
    reference = voice.stages.one_shot(ids, voice.speaking_rate)
    assert float(np.max(np.abs(_chunked(voice, ids) - reference))) <= MAX_ABS_DIFF


# ------------------------------------------------------------------ verification
def test_too_little_context_is_retried_doubled(tiny: Path, cache: Path) -> None:
    plan = ChunkSchedule(vocoder_context=3, flow_context=4)
    voice = VitsStreamingVoice.load(vits_files(tiny), cache_dir=cache, schedule=plan)
    assert voice.streaming
    assert (voice.schedule.vocoder_context, voice.schedule.flow_context) == (6, 8)


def test_far_too_little_context_falls_back_to_forward(tiny: Path, cache: Path) -> None:
    plan = ChunkSchedule(vocoder_context=1, flow_context=1)
    voice = VitsStreamingVoice.load(vits_files(tiny), cache_dir=cache, schedule=plan)
    assert not voice.streaming
    assert voice.fallback_reason is not None and "differs" in voice.fallback_reason
    ids = _ids(voice, SENTENCES["medium"])
    torch.manual_seed(7)
    chunks = list(voice.synthesize_ids(ids, 2.0))
    torch.manual_seed(7)  # the same noise: the whole segment is VitsModel.forward's
    model = voice.stages.model
    model.speaking_rate = voice.speaking_rate * 2.0
    try:
        with torch.inference_mode():
            reference = model(input_ids=torch.tensor([ids])).waveform.reshape(-1).numpy()
    finally:
        model.speaking_rate = voice.speaking_rate
    assert len(chunks) == 1
    np.testing.assert_array_equal(chunks[0], reference)


# ------------------------------------------------------------------ romanization
def _uroman_folder(tmp_path: Path) -> Path:
    return build_tiny_vits(tmp_path / "mms-tts-rus", language="rus", is_uroman=True)


def test_uroman_voice_romanizes(tmp_path: Path) -> None:
    pytest.importorskip("uroman")
    voice = VitsStreamingVoice.load(vits_files(_uroman_folder(tmp_path)), cache_dir=tmp_path)
    assert voice.language == "rus"
    assert voice.text.ids("привет мир") == voice.text.ids("privet mir")
    assert list(voice.synthesize("Привет, мир."))


def test_uroman_voice_without_uroman_is_a_clear_error_for_that_voice_only(
    tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _uroman_folder(tmp_path / "voices")
    _copy(tiny, tmp_path / "voices" / NAME)
    monkeypatch.setitem(sys.modules, "uroman", None)  # import uroman -> ImportError
    with pytest.raises(VoiceLoadError, match=r"romanized .*pip install uroman"):
        VitsStreamingVoice.load(vits_files(folder), cache_dir=tmp_path / "cache")
    engine = Engine.load(
        voices_dir=tmp_path / "voices", include_default=False, cache_dir=tmp_path / "cache"
    )
    assert list(engine.voices) == [NAME]
    assert "uroman" in engine.voice_errors["mms-tts-rus"]


# ------------------------------------------------------------------ broken folders
def _break(folder: Path, how: str) -> str:
    """Damage a copied checkpoint; return a pattern the error must match."""
    if how == "no-weights":
        (folder / "model.safetensors").unlink()
        return r"missing model\.safetensors or .*pytorch_model\.bin"
    if how == "no-vocab":
        (folder / "vocab.json").unlink()
        return r"missing vocab\.json"
    if how == "no-config":
        (folder / "config.json").unlink()
        (folder / "tokenizer_config.json").unlink()
        return r"missing config\.json, tokenizer_config\.json"
    if how == "garbage-config":
        (folder / "config.json").write_text("{not json")
        return r"config\.json: not a readable JSON"
    if how == "not-vits":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
        return r"model_type is 'bert', not 'vits'"
    if how == "garbage-weights":
        (folder / "model.safetensors").write_bytes(b"\x00garbage" * 64)
        return r"model\.safetensors: cannot load the model weights"
    if how == "truncated-weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        return r"model\.safetensors: cannot load the model weights"
    if how == "wrong-shapes":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 24}))
        return r"model\.safetensors: (weights do not match config\.json|cannot load)"
    raise AssertionError(how)


BREAKAGES = [
    "no-weights",
    "no-vocab",
    "no-config",
    "garbage-config",
    "not-vits",
    "garbage-weights",
    "truncated-weights",
    "wrong-shapes",
]


@pytest.mark.parametrize("how", BREAKAGES)
def test_broken_folder_named_directly_raises_naming_it(
    tiny: Path, tmp_path: Path, how: str
) -> None:
    folder = _copy(tiny, tmp_path / "broken")
    pattern = _break(folder, how)
    with pytest.raises(VoiceLoadError, match=re.escape(str(folder))) as info:
        Engine.load(folder, include_default=False, cache_dir=tmp_path / "cache")
    assert re.search(pattern, str(info.value)), str(info.value)


def test_broken_folders_are_reported_and_the_others_serve(tiny: Path, tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    _copy(tiny, voices / NAME)
    for how in ("no-weights", "garbage-config", "truncated-weights"):
        _break(_copy(tiny, voices / how), how)
    (voices / "notes").mkdir()  # no checkpoint files: not a voice, not an error
    assert [p.name for p in find_vits_voices(voices)] == sorted(
        [NAME, "garbage-config", "no-weights", "truncated-weights"]
    )
    engine = Engine.load(voices_dir=voices, include_default=False, cache_dir=tmp_path / "cache")
    assert list(engine.voices) == [NAME]
    assert sorted(engine.voice_errors) == ["garbage-config", "no-weights", "truncated-weights"]
    assert "missing model.safetensors" in engine.voice_errors["no-weights"]
    assert list(engine.stream("Still here.", voice=NAME))


def test_missing_folder_named_directly_raises(tmp_path: Path) -> None:
    with pytest.raises(VoiceLoadError, match="not found"):
        vits_files(tmp_path / "absent")


def test_without_torch_a_vits_folder_is_a_clear_error(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "engine.vits_voice", None)  # as if torch were missing
    with pytest.raises(VoiceLoadError, match=r"need torch and transformers .*requirements-vits"):
        Engine.load(tiny, include_default=False, cache_dir=tmp_path)
