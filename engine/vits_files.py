"""Finding and checking transformers VITS checkpoint folders (MMS-TTS and friends).

A checkpoint folder holds what ``VitsModel.save_pretrained`` and
``VitsTokenizer.save_pretrained`` write: ``config.json`` (``model_type:
"vits"``), the weights (``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``), ``vocab.json``
and ``tokenizer_config.json``. This module only reads JSON: it never imports
torch or transformers, so the engine can find VITS voices without paying for
those imports when there are none.

All errors are :class:`VoiceLoadError` with a message that names the folder
and what is missing or wrong, so a user who drops a half-copied checkpoint in
a voices folder sees why it was not loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.voice_files import VoiceLoadError

CONFIG = "config.json"
VOCAB = "vocab.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Any of these marks a folder as a (possibly half-copied) checkpoint.
MARKERS = (CONFIG, VOCAB, TOKENIZER_CONFIG, *WEIGHTS)
_MMS_NAME = re.compile(r"mms-tts-([a-z]{3}(?:-script_[a-z]+)?)$")


@dataclass(frozen=True)
class VitsFiles:
    """A transformers VITS checkpoint on disk; ``name`` is the folder name."""

    name: str
    folder: Path
    weights: Path

    @property
    def config(self) -> Path:
        return self.folder / CONFIG


def looks_like_checkpoint(folder: Path) -> bool:
    """True if ``folder`` holds any file a transformers checkpoint would have."""
    return folder.is_dir() and any((folder / marker).is_file() for marker in MARKERS)


def find_vits_voices(folder: Path) -> list[Path]:
    """Subfolders of ``folder`` that look like checkpoints, sorted by name.

    A subfolder is listed if it has any checkpoint file, complete or not:
    :func:`vits_files` then reports what is missing, so a half-copied voice
    is noticed rather than skipped. Checkpoints of other model types are
    reported the same way (their ``model_type`` is not ``vits``).
    """
    if not folder.is_dir():
        raise VoiceLoadError(f"{folder}: voices folder not found")
    return sorted(p for p in folder.iterdir() if looks_like_checkpoint(p))


def vits_files(folder: Path) -> VitsFiles:
    """Describe the checkpoint in ``folder``; :class:`VoiceLoadError` names what is missing."""
    if not folder.is_dir():
        raise VoiceLoadError(f"{folder}: VITS checkpoint folder not found")
    missing = [name for name in (CONFIG, VOCAB, TOKENIZER_CONFIG) if not (folder / name).is_file()]
    weights = next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        missing.append(" or ".join(WEIGHTS))
    if missing:
        raise VoiceLoadError(
            f"{folder}: not a complete transformers VITS checkpoint, missing " + ", ".join(missing)
        )
    assert weights is not None
    return VitsFiles(name=folder.name, folder=folder, weights=weights)


def read_vits_config(files: VitsFiles) -> dict[str, Any]:
    """Parse ``config.json`` and check that it describes a VITS model."""
    config = _read_json(files.config)
    if config.get("model_type") != "vits":
        raise VoiceLoadError(
            f"{files.config}: model_type is {config.get('model_type')!r}, not 'vits'"
        )
    rate = config.get("sampling_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise VoiceLoadError(f"{files.config}: sampling_rate must be a positive integer")
    return config


def read_tokenizer_config(files: VitsFiles) -> dict[str, Any]:
    """Parse ``tokenizer_config.json`` (language, ``is_uroman``, ``phonemize``...)."""
    return _read_json(files.folder / TOKENIZER_CONFIG)


def voice_language(files: VitsFiles, tokenizer_config: dict[str, Any]) -> str:
    """The voice's language: the tokenizer's ``language``, else an MMS folder suffix."""
    language = tokenizer_config.get("language")
    if isinstance(language, str) and language:
        return language
    match = _MMS_NAME.search(files.name)
    return match.group(1) if match else "und"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceLoadError(f"{path}: not a readable JSON file: {exc}") from exc
    if not isinstance(value, dict):
        raise VoiceLoadError(f"{path}: must be a JSON object")
    return value
