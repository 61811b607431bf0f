"""Token check shared by the handshake (``?token=``) and ``start.token``."""

from __future__ import annotations

import hmac


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
