"""The exceptions the client library raises to its caller."""

from __future__ import annotations


class TTSError(Exception):
    """A failure the caller must handle; ``code`` is a server or client error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TTSConnectionError(TTSError):
    """The server could not be reached (or kept refusing) within the retry budget."""


class UtteranceInProgress(RuntimeError):
    """``say()`` was called while the previous utterance had not ended."""
