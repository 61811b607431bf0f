"""Protocol v1 events as the client sees them: frozen, validated dataclasses.

:func:`parse_server_message` turns one server frame into an event and never
raises: a frame the client cannot make sense of becomes an :class:`Error`
with code ``bad_server_message``. Unknown message types are skipped
(``None``), so a newer server can add events without breaking old clients.

This module has no I/O and imports nothing outside the standard library, so
the client can be installed without the server's engine. Durations are in
milliseconds, rates in samples per second.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

AudioFormat = Literal["pcm_s16le", "pcm_f32le", "mulaw", "alaw"]
FORMATS: Final[tuple[AudioFormat, ...]] = get_args(AudioFormat)
_WIDTH: Final[dict[AudioFormat, int]] = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}

# Error codes the client itself produces (the server's own codes are in docs/protocol.md).
CONNECTION_LOST: Final = "connection_lost"  # the socket closed mid-utterance
TIMEOUT: Final = "timeout"  # the server went silent after ``end`` for too long
EMPTY_INPUT: Final = "empty_input"  # the text or token source held no text
INPUT_FAILED: Final = "input_failed"  # the token source raised; the utterance is cancelled
BAD_SERVER_MESSAGE: Final = "bad_server_message"

# Server codes after which no ``done`` follows for the utterance in progress.
_FATAL_SERVER_CODES: Final = frozenset(
    {"no_utterance", "bad_state", "unauthorized", "server_draining", "unknown_voice"}
)


def bytes_per_sample(fmt: AudioFormat) -> int:
    """Size of one mono sample of ``fmt`` in bytes; ``ValueError`` if unknown."""
    try:
        return _WIDTH[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {FORMATS}") from None


@dataclass(frozen=True)
class Ready:
    """The settings in effect on a connection (answer to ``start``)."""

    session_id: str
    voice: str
    format: AudioFormat
    sample_rate: int
    frame_ms: int
    speed: float
    channels: int = 1
    realtime: bool = True

    def __post_init__(self) -> None:
        bytes_per_sample(self.format)
        if self.sample_rate <= 0 or self.frame_ms <= 0:
            raise ValueError("sample_rate and frame_ms must be positive")


@dataclass(frozen=True)
class Segment:
    """A segment's text; sent just before its first audio frame."""

    index: int
    text: str
    audio_offset_ms: float


@dataclass(frozen=True)
class Audio:
    """One binary frame: mono audio in ``format`` at ``sample_rate``.

    Invariant: ``data`` holds a whole number of samples.
    """

    data: bytes
    format: AudioFormat
    sample_rate: int

    def __post_init__(self) -> None:
        width = bytes_per_sample(self.format)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if len(self.data) % width:
            raise ValueError(f"{len(self.data)} bytes is not a whole number of {self.format}")

    @property
    def samples(self) -> int:
        return len(self.data) // bytes_per_sample(self.format)

    @property
    def duration_ms(self) -> float:
        return self.samples * 1000.0 / self.sample_rate

    def pcm16(self) -> bytes:
        """The same audio as little-endian signed 16-bit PCM (G.711 decoded, floats scaled)."""
        return to_pcm16(self.data, self.format)


@dataclass(frozen=True)
class Metrics:
    """Figures of a finished utterance, as measured by the server (milliseconds)."""

    ttft_ms: float | None
    ttfa_from_first_text_ms: float | None
    audio_ms: float
    synth_ms: float
    rtf: float | None
    segments: int
    underruns: int = 0  # frames the server wrote late for a real-time listener


@dataclass(frozen=True)
class Done:
    """The utterance was spoken to the end."""

    metrics: Metrics


@dataclass(frozen=True)
class Cancelled:
    """The utterance was cut off: ``audio_sent_ms`` is how far the listener can have heard."""

    audio_sent_ms: float
    spoken_text: str
    unspoken_text: str


@dataclass(frozen=True)
class Error:
    """A problem reported by the server, or by the client (codes above).

    ``fatal`` errors end the utterance's stream; others (for example
    ``synthesis_failed`` on one segment, or ``rate_limited``) are reported
    and the utterance goes on.
    """

    code: str
    message: str
    fatal: bool = False
    segment: int | None = None
    unspoken_text: str | None = None


Event = Ready | Segment | Audio | Done | Cancelled | Error
FinalEvent = Done | Cancelled | Error


def is_final(event: Event) -> bool:
    """Whether ``event`` ends an utterance's stream."""
    return isinstance(event, Done | Cancelled) or (isinstance(event, Error) and event.fatal)


def parse_server_message(frame: str | bytes, ready: Ready | None) -> Event | None:
    """One server frame as an event; ``None`` for a message type this client does not know.

    Binary frames need ``ready`` (the connection's format and rate). Never raises.
    """
    try:
        if isinstance(frame, bytes):
            if ready is None:
                raise ValueError("audio before ready")
            return Audio(frame, ready.format, ready.sample_rate)
        data = json.loads(frame)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return _from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        return Error(BAD_SERVER_MESSAGE, f"cannot read server message: {exc}", fatal=True)


def _from_json(data: dict[str, Any]) -> Event | None:
    kind = data.get("type")
    if kind == "segment":
        return Segment(int(data["index"]), str(data["text"]), float(data["audio_offset_ms"]))
    if kind == "done":
        figures = data["metrics"]
        return Done(
            Metrics(
                ttft_ms=_optional_float(figures.get("ttft_ms")),
                ttfa_from_first_text_ms=_optional_float(figures.get("ttfa_from_first_text_ms")),
                audio_ms=float(figures["audio_ms"]),
                synth_ms=float(figures.get("synth_ms") or 0.0),
                rtf=_optional_float(figures.get("rtf")),
                segments=int(figures.get("segments") or 0),
                underruns=int(figures.get("underruns") or 0),
            )
        )
    if kind == "cancelled":
        return Cancelled(
            float(data["audio_sent_ms"]), str(data["spoken_text"]), str(data["unspoken_text"])
        )
    if kind == "error":
        code = str(data["code"])
        segment = data.get("segment")
        unspoken = data.get("unspoken_text")
        return Error(
            code,
            str(data.get("message", "")),
            fatal=code in _FATAL_SERVER_CODES,
            segment=int(segment) if segment is not None else None,
            unspoken_text=str(unspoken) if unspoken is not None else None,
        )
    if kind == "ready":
        fmt = data["format"]
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        return Ready(
            str(data["session_id"]),
            str(data["voice"]),
            fmt,
            int(data["sample_rate"]),
            int(data["frame_ms"]),
            float(data["speed"]),
            int(data.get("channels", 1)),
            bool(data.get("realtime", True)),
        )
    return None


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


# ------------------------------------------------------------------ decoding
def _ulaw_to_linear(code: int) -> int:
    inverted = ~code & 0xFF
    level = (((inverted & 0x0F) << 3) + 0x84) << ((inverted & 0x70) >> 4)
    return 0x84 - level if inverted & 0x80 else level - 0x84


def _alaw_to_linear(code: int) -> int:
    toggled = code ^ 0x55
    segment = (toggled & 0x70) >> 4
    level = (toggled & 0x0F) << 4
    level = level + 8 if segment == 0 else (level + 0x108) << max(segment - 1, 0)
    return level if toggled & 0x80 else -level


# G.711 code -> little-endian int16 bytes, the same tables as the server's engine.codecs.
_G711: Final[dict[AudioFormat, tuple[bytes, ...]]] = {
    "mulaw": tuple(struct.pack("<h", _ulaw_to_linear(c)) for c in range(256)),
    "alaw": tuple(struct.pack("<h", _alaw_to_linear(c)) for c in range(256)),
}


def to_pcm16(data: bytes, fmt: AudioFormat) -> bytes:
    """``data`` in ``fmt`` as little-endian int16 PCM bytes (two per sample).

    Floats are clipped to [-1, 1] and scaled by 32767 (rounded), as the server does.
    """
    if len(data) % bytes_per_sample(fmt):
        raise ValueError(f"{len(data)} bytes is not a whole number of {fmt} samples")
    if fmt == "pcm_s16le":
        return bytes(data)
    if fmt == "pcm_f32le":
        floats = struct.unpack(f"<{len(data) // 4}f", data)
        ints = [round(max(-1.0, min(1.0, x if x == x else 0.0)) * 32767) for x in floats]
        return struct.pack(f"<{len(ints)}h", *ints)
    table = _G711[fmt]
    return b"".join(table[c] for c in data)
