"""The exceptions the client library raises to its caller."""

from __future__ import annotations


class TTSError(Exception):
    """A failure the caller must handle; ``code`` is a server or client error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TTSConnectionError(TTSError):
    """The server could not be reached (or kept refusing) within the retry budget.

    ``server_answered`` is true when the last attempt reached a server that
    refused for now (full, draining, HTTP 502-504), false when nothing answered.
    """

    def __init__(self, code: str, message: str, *, server_answered: bool = False) -> None:
        super().__init__(code, message)
        self.server_answered = server_answered


class UtteranceInProgress(RuntimeError):
    """``say()`` was called while the previous utterance had not ended."""
