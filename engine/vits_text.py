"""Text to token ids for a transformers VITS voice: ``VitsTokenizer`` plus uroman.

MMS-TTS checkpoints for non-Latin scripts set ``is_uroman``: their text must
be romanized first. ``VitsTokenizer`` does that itself only when the
``uroman`` package is installed, builds a new romanizer (seconds of table
loading) on every call, and otherwise just logs a warning and drops the
characters it cannot read. ``VitsText`` loads the romanizer once, at load
time, and refuses to load such a voice when ``uroman`` is missing, with an
error that says so (the other voices still load).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from transformers.models.vits.tokenization_vits import VitsTokenizer

from engine.vits_files import VitsFiles
from engine.voice_files import VoiceLoadError

_NON_ASCII = re.compile(r"[^\x00-\x7F]")


@dataclass
class VitsText:
    """A voice's tokenizer; :meth:`ids` is thread-safe."""

    tokenizer: Any
    romanizer: Any | None = None
    _romanize_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, files: VitsFiles, tokenizer_config: dict[str, Any]) -> VitsText:
        """Load the tokenizer from ``files.folder`` (local files only)."""
        romanizer = None
        if tokenizer_config.get("is_uroman"):
            try:
                import uroman  # type: ignore[import-untyped,import-not-found,unused-ignore]
            except ImportError as exc:
                raise VoiceLoadError(
                    f"{files.folder}: this voice's text must be romanized (is_uroman in "
                    "tokenizer_config.json) and the uroman package is not installed: "
                    "pip install uroman"
                ) from exc
            romanizer = uroman.Uroman()
        try:
            tokenizer = VitsTokenizer.from_pretrained(str(files.folder), local_files_only=True)
        except Exception as exc:
            raise VoiceLoadError(f"{files.folder}: cannot load the VITS tokenizer: {exc}") from exc
        tokenizer.is_uroman = False  # romanized here, with the romanizer loaded once
        text = cls(tokenizer, romanizer)
        try:
            text.ids("Hello.")
        except Exception as exc:  # phonemize: true without the phonemizer package, ...
            raise VoiceLoadError(f"{files.folder}: the VITS tokenizer cannot run: {exc}") from exc
        return text

    @property
    def blank(self) -> bool:
        """True if the tokenizer puts a blank id between characters (MMS: yes)."""
        return bool(self.tokenizer.add_blank)

    def ids(self, text: str) -> list[int]:
        """Token ids for ``text``; empty when nothing in it is in the vocabulary."""
        t = self.tokenizer
        if self.romanizer is not None and _NON_ASCII.search(text):
            # The order VitsTokenizer uses: normalize, language fixes, romanize.
            prepared = t._preprocess_char(t.normalize_text(text) if t.normalize else text)
            with self._romanize_lock:
                text = str(self.romanizer.romanize_string(prepared))
        ids = [int(i) for i in t(text)["input_ids"]]
        return ids if len(ids) > (1 if self.blank else 0) else []

    def vocabulary_ids(self, count: int) -> list[int]:
        """``count`` valid ids cycling through the vocabulary (a probe for any script)."""
        symbols = [i for i in range(1, int(self.tokenizer.vocab_size))]
        if not symbols:
            return [0] * count
        chars = [symbols[i % len(symbols)] for i in range(count // 2 if self.blank else count)]
        if not self.blank:
            return chars
        out = [0] * (2 * len(chars) + 1)
        out[1::2] = chars
        return out
