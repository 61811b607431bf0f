"""Protocol v1 wire messages: typed, validated at the edge.

Client messages are frozen dataclasses; ``parse_client_message`` turns one
WebSocket frame into either a message or a :class:`ProtocolError` value, and
never raises. Server messages are built by the ``*_message`` functions below
and serialised with :func:`encode`. See ``docs/protocol.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from engine.audio import ENCODINGS, AudioEncoding

ErrorCode = Literal[
    "bad_json",  # the frame is not valid UTF-8 JSON
    "bad_message",  # JSON, but not an object with a string "type"
    "unknown_type",
    "bad_field",  # a field has the wrong type or is out of range
    "unknown_voice",
    "text_too_long",  # one message or one utterance over its limit
    "binary_not_allowed",  # clients send JSON text frames only
    "bad_state",  # the message is not allowed now (e.g. start mid-utterance)
    "no_utterance",  # flush/end with nothing to speak
    "unauthorized",
    "rate_limited",
    "synthesis_failed",  # the engine failed on this session's text
    "server_draining",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)

MIN_RATE, MAX_RATE = 8000, 48000
MIN_FRAME_MS, MAX_FRAME_MS = 10, 200
MIN_SPEED, MAX_SPEED = 0.5, 2.0


@dataclass(frozen=True)
class ProtocolError:
    """A problem with what the client sent; becomes an ``error`` message.

    ``unspoken_text`` is set when the problem is that a ``text`` message was
    not accepted (over the rate limit): the client learns exactly which text
    will not be spoken.
    """

    code: ErrorCode
    message: str
    unspoken_text: str | None = None


@dataclass(frozen=True)
class Start:
    """Session settings for the next utterances; ``None`` keeps the current value."""

    voice: str | None = None
    format: AudioEncoding | None = None
    sample_rate: int | None = None
    frame_ms: int | None = None
    speed: float | None = None
    token: str | None = None
    realtime: bool | None = None


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class End:
    pass


@dataclass(frozen=True)
class Cancel:
    pass


ClientMessage = Start | Text | Flush | End | Cancel


def parse_client_message(
    frame: str | bytes, *, max_text_chars: int
) -> ClientMessage | ProtocolError:
    """Parse one client frame. Never raises; bad input gives a :class:`ProtocolError`."""
    if isinstance(frame, bytes):
        return ProtocolError(
            "binary_not_allowed", "send JSON text frames; binary frames are not accepted"
        )
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int-digits limit, depth
        return ProtocolError("bad_json", f"not valid JSON: {exc}")
    if not isinstance(data, dict):
        return ProtocolError("bad_message", "a message must be a JSON object with a 'type'")
    kind = data.get("type")
    if not isinstance(kind, str):
        return ProtocolError("bad_message", "a message must have a string field 'type'")
    if kind == "text":
        return _parse_text(data, max_text_chars)
    if kind == "start":
        return _parse_start(data)
    simple: dict[str, ClientMessage] = {"flush": Flush(), "end": End(), "cancel": Cancel()}
    if kind in simple:
        return simple[kind]
    return ProtocolError(
        "unknown_type",
        f"unknown message type {kind[:40]!r}; expected start, text, flush, end or cancel",
    )


def _parse_text(data: dict[str, Any], max_chars: int) -> Text | ProtocolError:
    text = data.get("text")
    if not isinstance(text, str):
        return ProtocolError("bad_field", "'text' must be a string")
    if len(text) > max_chars:
        return ProtocolError(
            "text_too_long", f"one text message may hold at most {max_chars} characters"
        )
    if not _is_unicode(text):
        return ProtocolError("bad_field", "'text' contains lone surrogates (invalid Unicode)")
    return Text(_clean(text))


def _is_unicode(value: str) -> bool:
    """False for a string with lone surrogates (JSON allows ``"\\ud800"``; UTF-8 does not).

    Such a string must not get past the parser: encoding it later (to compare
    a token, to log or echo it) raises ``UnicodeEncodeError``.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(text: str) -> str:
    """Replace control characters (other than whitespace) with spaces, keeping length."""
    return "".join(
        " " if (ord(c) < 32 and c not in "\t\n\r") or 127 <= ord(c) < 160 else c for c in text
    )


def _parse_start(data: dict[str, Any]) -> Start | ProtocolError:
    fields: dict[str, Any] = {}
    voice = data.get("voice")
    if voice is not None and not (isinstance(voice, str) and _is_unicode(voice)):
        return ProtocolError("bad_field", "'voice' must be a string (valid Unicode)")
    fields["voice"] = voice
    fmt = data.get("format")
    if fmt is not None and fmt not in ENCODINGS:
        return ProtocolError("bad_field", f"'format' must be one of {', '.join(ENCODINGS)}")
    fields["format"] = fmt
    for name, low, high in (
        ("sample_rate", MIN_RATE, MAX_RATE),
        ("frame_ms", MIN_FRAME_MS, MAX_FRAME_MS),
    ):
        value = data.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            return ProtocolError("bad_field", f"'{name}' must be an integer from {low} to {high}")
        fields[name] = value
    speed = data.get("speed")
    if speed is not None:
        ok = isinstance(speed, int | float) and not isinstance(speed, bool)
        if not ok or not MIN_SPEED <= speed <= MAX_SPEED:  # NaN and huge ints fail this too
            return ProtocolError(
                "bad_field", f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}"
            )
        speed = float(speed)
    fields["speed"] = speed
    token = data.get("token")
    # A lone surrogate here used to reach token_matches() and raise from str.encode().
    if token is not None and not (isinstance(token, str) and _is_unicode(token)):
        return ProtocolError("bad_field", "'token' must be a string (valid Unicode)")
    fields["token"] = token
    realtime = data.get("realtime")
    if realtime is not None and not isinstance(realtime, bool):
        return ProtocolError("bad_field", "'realtime' must be true or false")
    fields["realtime"] = realtime
    return Start(**fields)


# ----------------------------------------------------------------- server side
def encode(message: dict[str, Any]) -> str:
    """Serialise a server message (compact JSON, non-ASCII kept as is)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def error_message(error: ProtocolError) -> dict[str, Any]:
    message = {"type": "error", "code": error.code, "message": error.message}
    if error.unspoken_text is not None:
        message["unspoken_text"] = error.unspoken_text
    return message


def ready_message(
    session_id: str,
    voice: str,
    fmt: str,
    sample_rate: int,
    frame_ms: int,
    speed: float,
    realtime: bool = True,
) -> dict[str, Any]:
    return {
        "type": "ready",
        "session_id": session_id,
        "voice": voice,
        "format": fmt,
        "sample_rate": sample_rate,
        "frame_ms": frame_ms,
        "speed": speed,
        "realtime": realtime,
        "channels": 1,
    }


def segment_message(index: int, text: str, audio_offset_ms: float) -> dict[str, Any]:
    return {
        "type": "segment",
        "index": index,
        "text": text,
        "audio_offset_ms": round(audio_offset_ms, 1),
    }


def done_message(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"type": "done", "metrics": metrics}


def cancelled_message(audio_sent_ms: float, spoken_text: str, unspoken_text: str) -> dict[str, Any]:
    return {
        "type": "cancelled",
        "audio_sent_ms": round(audio_sent_ms, 1),
        "spoken_text": spoken_text,
        "unspoken_text": unspoken_text,
    }
