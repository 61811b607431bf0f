"""Keep access tokens out of logs.

websockets logs request lines (``GET /v1/tts?token=...``) and, at DEBUG,
every frame (``{"type":"start","token":"..."}``). This filter, attached to
the log handlers, masks a token's value in any record before it is written.
"""

from __future__ import annotations

import logging
import re

# token=VALUE (query) or "token":"VALUE" (JSON, possibly with escaped quotes in a repr)
_TOKEN = re.compile(r"""(token(?:\\?")?\s*[:=]\s*(?:\\?")?)[^"'\\\s&]+""", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every token value replaced by ``***``."""
    return _TOKEN.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """A handler filter that rewrites records whose message holds a token."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Attach :class:`RedactTokens` to every handler of ``logger`` (default: root)."""
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(RedactTokens())
