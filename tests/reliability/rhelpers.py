"""Shared pieces of the reliability suite: voices, the bad-message corpus, timed clients.

- ``deterministic_voice`` puts the default voice in a folder with its sampling
  noise off, so equal text gives byte-identical audio and "undisturbed" can be
  checked byte for byte;
- ``build_faulty_voice`` builds a tiny voice that loads and warms fine but
  whose ONNX fails at run time on text holding ``FAULT_CHAR``;
- ``BAD_FRAMES`` is the stateless corpus: one frame, one stable error code,
  nothing changes in the session;
- ``timed_speak`` runs one utterance and measures time to first audio on the
  client's clock.

Every wait is bounded (see ``wsclient``). Loopback only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiny_voice import build_tiny_voice
from websockets.asyncio.client import ClientConnection, connect
from wsclient import Collected, check_utterance, collect, send_json, wait_for_metric

from engine.voice_files import default_voice_files

DET_VOICE = "joe-det"
FAULTY_VOICE = "faulty"
FAULT_CHAR = "§"  # the faulty voice maps it to a phoneme id outside its embedding table
FAULT_ID = 100_000
SHORT = "Yes."
TEXT = "Hello there, my friend. How are you doing today? I am fine."


# ------------------------------------------------------------------- voices
def deterministic_voice(folder: Path, name: str = DET_VOICE) -> Path:
    """Put the default voice's model in ``folder`` as ``name`` with noise off; return it.

    Piper samples phoneme durations; with ``noise_scale`` and ``noise_w`` at 0
    the same text gives the same samples, so two runs compare byte for byte.
    """
    files = default_voice_files()
    config = json.loads(files.config.read_text(encoding="utf-8"))
    config["inference"] = {**config.get("inference", {}), "noise_scale": 0.0, "noise_w": 0.0}
    model = folder / f"{name}.onnx"
    model.symlink_to(files.model.resolve())  # same bytes, so the split-graph cache is shared
    model.with_name(model.name + ".json").write_text(json.dumps(config), encoding="utf-8")
    return model


def build_faulty_voice(folder: Path, name: str = FAULTY_VOICE) -> Path:
    """A tiny voice that loads, verifies and warms fine but fails on ``FAULT_CHAR``.

    Its config says ``phoneme_type: text`` (phonemes are the text's
    codepoints, so which text fails is exact) and maps ``FAULT_CHAR`` to id
    ``FAULT_ID``, far outside the 256-row embedding table. onnxruntime checks
    Gather indices at run time, so the load-time probe and warm-up (which
    never contain that character) pass, and any segment containing it raises
    ``INVALID_ARGUMENT`` in the frontend stage: a real engine fault, not a mock.
    """
    model = build_tiny_voice(folder, name=name)
    config_path = model.with_name(model.name + ".json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    id_map: dict[str, list[int]] = config["phoneme_id_map"]
    for upper, lower in zip(string.ascii_uppercase, string.ascii_lowercase, strict=True):
        id_map.setdefault(upper, id_map.get(lower, [3]))  # no "missing phoneme" log spam
    id_map.setdefault("g", [66])
    id_map[FAULT_CHAR] = [FAULT_ID]
    config["phoneme_type"] = "text"
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return model


# ------------------------------------------------------------ the bad corpus
@dataclass(frozen=True)
class Bad:
    """One bad frame and the error code it must get (on an idle, authorised session)."""

    name: str
    frame: str | bytes
    code: str


def _msg(**fields: Any) -> str:
    return json.dumps(fields)


def _start(raw_fields: str) -> str:
    """A start message whose fields are given as raw JSON text (NaN, huge numbers, …)."""
    return '{"type": "start", ' + raw_fields + "}"


BAD_FRAMES: tuple[Bad, ...] = (
    # invalid JSON
    Bad("empty frame", "", "bad_json"),
    Bad("spaces", "   ", "bad_json"),
    Bad("open brace", "{", "bad_json"),
    Bad("prose", "not json at all", "bad_json"),
    Bad("single quotes", "{'type': 'text'}", "bad_json"),
    Bad("trailing comma", '{"type": "text", "text": "a",}', "bad_json"),
    Bad("trailing garbage", '{"type": "end"} {"type": "end"}', "bad_json"),
    Bad("NUL byte", "\x00", "bad_json"),
    Bad("nesting deeper than the parser", "[" * 20_000 + "]" * 20_000, "bad_json"),
    Bad("int with 5000 digits", _start('"sample_rate": ' + "9" * 5000), "bad_json"),
    # JSON that is not an object
    Bad("array", "[1, 2]", "bad_message"),
    Bad("string", '"text"', "bad_message"),
    Bad("null", "null", "bad_message"),
    Bad("number", "42", "bad_message"),
    Bad("true", "true", "bad_message"),
    Bad("overflowing float", "1e999", "bad_message"),
    # missing or non-string type
    Bad("empty object", "{}", "bad_message"),
    Bad("no type", _msg(text="no type"), "bad_message"),
    Bad("type number", _msg(type=5), "bad_message"),
    Bad("type null", _msg(type=None), "bad_message"),
    Bad("type list", _msg(type=["text"]), "bad_message"),
    # unknown type
    Bad("type speak", _msg(type="speak"), "unknown_type"),
    Bad("type upper case", _msg(type="TEXT"), "unknown_type"),
    Bad("type empty", _msg(type=""), "unknown_type"),
    Bad("type with control chars", _msg(type="te\x00xt\x1b[2J"), "unknown_type"),
    Bad("type 10k chars", _msg(type="x" * 10_000), "unknown_type"),
    # text: wrong field types, empty, lone surrogates
    Bad("text missing", _msg(type="text"), "bad_field"),
    Bad("text number", _msg(type="text", text=5), "bad_field"),
    Bad("text null", _msg(type="text", text=None), "bad_field"),
    Bad("text list", _msg(type="text", text=["a"]), "bad_field"),
    Bad("text object", _msg(type="text", text={"a": 1}), "bad_field"),
    Bad("text empty", _msg(type="text", text=""), "bad_field"),
    Bad("lone high surrogate", '{"type": "text", "text": "\\ud800"}', "bad_field"),
    Bad("lone low surrogate", '{"type": "text", "text": "ok \\udfff ok"}', "bad_field"),
    Bad("half a surrogate pair", '{"type": "text", "text": "smile \\ud83d"}', "bad_field"),
    # start: wrong types
    Bad("voice number", _msg(type="start", voice=5), "bad_field"),
    Bad("format number", _msg(type="start", format=1), "bad_field"),
    Bad("format mp3", _msg(type="start", format="mp3"), "bad_field"),
    Bad("format list", _msg(type="start", format=["mulaw"]), "bad_field"),
    Bad("sample_rate string", _msg(type="start", sample_rate="8000"), "bad_field"),
    Bad("sample_rate float", _msg(type="start", sample_rate=22050.5), "bad_field"),
    Bad("sample_rate bool", _msg(type="start", sample_rate=True), "bad_field"),
    Bad("frame_ms string", _msg(type="start", frame_ms="20"), "bad_field"),
    Bad("speed string", _msg(type="start", speed="fast"), "bad_field"),
    Bad("speed bool", _msg(type="start", speed=True), "bad_field"),
    Bad("token number", _msg(type="start", token=5), "bad_field"),
    Bad("voice lone surrogate", '{"type": "start", "voice": "\\ud800"}', "bad_field"),
    Bad("token lone surrogate", '{"type": "start", "token": "\\udc00"}', "bad_field"),
    # start: out of range
    Bad("sample_rate 0", _msg(type="start", sample_rate=0), "bad_field"),
    Bad("sample_rate -8000", _msg(type="start", sample_rate=-8000), "bad_field"),
    Bad("sample_rate 7999", _msg(type="start", sample_rate=7999), "bad_field"),
    Bad("sample_rate 48001", _msg(type="start", sample_rate=48001), "bad_field"),
    Bad("sample_rate 10**30", _start('"sample_rate": ' + "1" + "0" * 30), "bad_field"),
    Bad("frame_ms 9", _msg(type="start", frame_ms=9), "bad_field"),
    Bad("frame_ms 201", _msg(type="start", frame_ms=201), "bad_field"),
    Bad("frame_ms 0", _msg(type="start", frame_ms=0), "bad_field"),
    Bad("speed 0.49", _msg(type="start", speed=0.49), "bad_field"),
    Bad("speed 2.01", _msg(type="start", speed=2.01), "bad_field"),
    Bad("speed 0", _msg(type="start", speed=0), "bad_field"),
    Bad("speed -1", _msg(type="start", speed=-1), "bad_field"),
    Bad("speed NaN", _start('"speed": NaN'), "bad_field"),
    Bad("speed Infinity", _start('"speed": Infinity'), "bad_field"),
    Bad("speed -Infinity", _start('"speed": -Infinity'), "bad_field"),
    Bad("speed 1e400", _start('"speed": 1e400'), "bad_field"),
    # start: unknown voice
    Bad("voice nobody", _msg(type="start", voice="nobody"), "unknown_voice"),
    Bad("voice empty", _msg(type="start", voice=""), "unknown_voice"),
    Bad("voice path", _msg(type="start", voice="../../etc/passwd"), "unknown_voice"),
    Bad("voice control chars", _msg(type="start", voice="joe\x00\x1b[31m"), "unknown_voice"),
    Bad("voice 5000 chars", _msg(type="start", voice="v" * 5000), "unknown_voice"),
    # binary frames
    Bad("binary bytes", b"\x00\x01\xff binary", "binary_not_allowed"),
    Bad("binary JSON", b'{"type": "text", "text": "Hi."}', "binary_not_allowed"),
    Bad("binary empty", b"", "binary_not_allowed"),
    # flush and end with nothing in progress
    Bad("flush when idle", _msg(type="flush"), "no_utterance"),
    Bad("end when idle", _msg(type="end"), "no_utterance"),
)


# ------------------------------------------------------------------ clients
async def expect_error(
    conn: ClientConnection, frame: str | bytes, code: str, into: Collected | None = None
) -> dict[str, Any]:
    """Send ``frame``; the next ``error`` must have ``code`` and a non-empty message.

    Events before it (audio of an utterance in progress) go to ``into``;
    without ``into`` there must be none.
    """
    await conn.send(frame)
    got = into if into is not None else Collected()
    await collect(conn, until=("error",), within=10, into=got)
    error = got.events.pop()
    got.times.pop()
    assert isinstance(error, dict) and error["type"] == "error", got.summary()
    assert error["code"] == code, (frame[:60], error)
    assert isinstance(error["message"], str) and error["message"], error
    assert into is not None or got.events == [], got.summary()
    return error


async def still_usable(conn: ClientConnection) -> None:
    """Cheap liveness probe (no synthesis): ``cancel`` when idle answers ``cancelled`` zeros."""
    await send_json(conn, {"type": "cancel"})
    got = await collect(conn, within=10)
    assert got.types == ["cancelled"], got.summary()
    assert got.one("cancelled")["audio_sent_ms"] == 0.0


async def still_speaks(conn: ClientConnection, rate: int = 22050) -> dict[str, Any]:
    """The session is usable: a short utterance on it completes with ``done``."""
    await send_json(conn, {"type": "text", "text": SHORT})
    await send_json(conn, {"type": "end"})
    return check_utterance(await collect(conn, within=30), rate=rate)


@dataclass(frozen=True)
class Timed:
    """One utterance: what arrived, and time to first audio on the client's clock."""

    got: Collected
    client_ttfa_ms: float  # from sending the first text to the first audio frame
    server_ttft_ms: float

    @property
    def audio(self) -> bytes:
        return b"".join(self.got.frames)


async def timed_speak(
    url: str, text: str, start: Mapping[str, Any], *, within: float = 60.0
) -> Timed:
    """Connect, ``start`` (waits for ``ready``), send ``text`` and ``end``; collect to ``done``."""
    async with asyncio.timeout(within), connect(url, open_timeout=10) as conn:
        await send_json(conn, {"type": "start", **start})
        await collect(conn, until=("ready",), within=10)
        sent_at = time.monotonic()
        await send_json(conn, {"type": "text", "text": text})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, within=within)
    first = next(t for e, t in zip(got.events, got.times, strict=True) if isinstance(e, bytes))
    metrics = check_utterance(got)
    return Timed(got, 1000 * (first - sent_at), float(metrics["ttft_ms"]))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


TTFT_SLACK_MS = 100.0


def neighbour_ttfts(alone: list[Timed], beside: list[Timed]) -> tuple[float, float]:
    """Median server TTFT alone and beside a disturbance, after checking that every
    utterance beside it produced byte-identical audio to the first one alone."""
    for run in beside:
        assert run.audio == alone[0].audio
    return (
        median([t.server_ttft_ms for t in alone]),
        median([t.server_ttft_ms for t in beside]),
    )


def assert_ttft_undisturbed(alone_ms: float, disturbed_ms: float) -> None:
    """Disturbed median TTFT under ``2 * alone + TTFT_SLACK_MS``.

    Generous on purpose: the test machine is shared (2 cores, other suites
    running), and medians of a few runs move by tens of milliseconds. What this
    catches is the real failure: an event loop or engine pool blocked by the
    neighbour, which costs hundreds of milliseconds or times out.
    """
    bound = 2 * alone_ms + TTFT_SLACK_MS
    assert disturbed_ms < bound, f"TTFT {disturbed_ms:.1f} ms, alone {alone_ms:.1f} ms"


async def no_sessions_open(http_url: str, within: float = 15.0) -> None:
    """Wait until the server has dropped every earlier session (``--max-sessions``)."""
    await wait_for_metric(http_url, "firstword_active_sessions", lambda v: v == 0, within)
