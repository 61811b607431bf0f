"""Protocol v1 end to end: the real server.py on loopback, a real WebSocket client.

Three servers serve this module:

- ``server`` (conftest): the default configuration and the real default voice;
- ``tight``: the same voice model with its sampling noise turned off, so that
  equal text gives byte-identical audio (Piper samples phoneme durations, so
  with the stock config two runs of one text differ by ±100 ms), plus small
  limits (``--max-text-chars``, ``--max-utterance-chars``,
  ``--max-message-bytes``, ``--max-sessions 2``) and an idle flush far away
  (``--flush-ms 10000``) so that only an explicit ``flush`` releases a fragment;
- ``guarded``: ``--origins`` and ``--token``.

Every wait is bounded (see ``wsclient``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import RunningServer, start_server
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin
from wsclient import (
    MS_ROUNDING,
    Collected,
    check_utterance,
    collect,
    read_for,
    send_json,
    speak,
    wait_closed,
    wait_for_metric,
)

from engine.audio import AudioEncoding
from engine.codecs import decode
from engine.voice_files import default_voice_files

pytestmark = pytest.mark.timeout(120)

NATIVE_RATE = 22050
WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1, "alaw": 1}  # bytes per sample (protocol)
TEXT = "Hello there, my friend. How are you doing today? I am fine."
TEXT_SEGMENTS = ["Hello there, my friend.", "How are you doing today?", "I am fine."]
SENTENCE = "Please call me back tomorrow morning."
SHORT = "Yes."
LONG_TEXT = " ".join(
    f"This is sentence number {n} of a long answer that keeps going." for n in range(1, 13)
)
FRAGMENT = "Well here is a fragment"

DET_VOICE = "joe-det"
MAX_TEXT_CHARS = 120
MAX_UTTERANCE_CHARS = 150
MAX_MESSAGE_BYTES = 4096
GOOD_ORIGIN = Origin("http://good.example")
TOKEN = "s3cret"


# ------------------------------------------------------------------ fixtures
def deterministic_voice(folder: Path) -> None:
    """Put the default voice's model in ``folder`` as ``DET_VOICE``, with noise off."""
    files = default_voice_files()
    config = json.loads(files.config.read_text(encoding="utf-8"))
    config["inference"] = {**config.get("inference", {}), "noise_scale": 0.0, "noise_w": 0.0}
    (folder / f"{DET_VOICE}.onnx").symlink_to(files.model.resolve())
    (folder / f"{DET_VOICE}.onnx.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    voices = tmp_path_factory.mktemp("voices")
    deterministic_voice(voices)
    flags = {
        "--voices": voices,
        "--max-text-chars": MAX_TEXT_CHARS,
        "--max-utterance-chars": MAX_UTTERANCE_CHARS,
        "--max-message-bytes": MAX_MESSAGE_BYTES,
        "--max-sessions": 2,
        "--flush-ms": 10_000,
    }
    s = start_server(tmp_path_factory.mktemp("tight"), *(str(x) for f in flags.items() for x in f))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("guarded"), "--origins", GOOD_ORIGIN, "--token", TOKEN)
    yield s
    s.stop()


# ------------------------------------------------------------------- helpers
def tokens(text: str) -> list[str]:
    """``text`` cut like an LLM stream: one word per message, the space leading."""
    first, *rest = text.split(" ")
    return [first] + [" " + w for w in rest]


def words(text: str) -> list[str]:
    return text.split()


def segment_texts(got: Collected) -> list[str]:
    return [str(s["text"]) for s in got.of_type("segment")]


async def no_sessions_open(srv: RunningServer) -> None:
    """Wait until the server has dropped every earlier test's session (max-sessions)."""
    await wait_for_metric(srv.http, "firstword_active_sessions", lambda v: v == 0)


async def expect_error(
    conn: ClientConnection, frame: str | bytes, code: str, into: Collected | None = None
) -> dict[str, Any]:
    """Send ``frame``; the next ``error`` must have ``code``. Return it.

    Events before the error (audio of an utterance in progress) go to ``into``;
    without ``into`` there must be none. The error itself is not kept.
    """
    await conn.send(frame)
    got = into if into is not None else Collected()
    await collect(conn, until=("error",), within=5, into=got)
    error = got.events.pop()
    got.times.pop()
    assert isinstance(error, dict) and error["type"] == "error", got.summary()
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert into is not None or got.events == [], got.summary()
    return error


async def still_speaks(conn: ClientConnection) -> None:
    """The session is usable: a short utterance on it completes with ``done``."""
    await send_json(conn, {"type": "text", "text": SHORT})
    await send_json(conn, {"type": "end"})
    check_utterance(await collect(conn, within=20))


# ------------------------------------------------------- order and messages
async def test_utterance_events_come_in_protocol_order(server: RunningServer) -> None:
    got = await speak(server.ws, TEXT)

    assert got.types[0] == "ready"
    check_utterance(got)
    assert segment_texts(got) == TEXT_SEGMENTS
    assert {len(f) for f in got.frames} == {441 * 2}  # 20 ms at 22050 Hz, s16


async def test_every_client_message_type_on_one_connection(server: RunningServer) -> None:
    async with connect(server.ws) as conn:
        await send_json(conn, {"type": "start", "frame_ms": 40, "speed": 1.25})
        ready = (await collect(conn, until=("ready",), within=5)).one("ready")
        assert ready == {
            "type": "ready",
            "session_id": ready["session_id"],
            "voice": "en_US-joe-medium",
            "format": "pcm_s16le",
            "sample_rate": NATIVE_RATE,
            "frame_ms": 40,
            "speed": 1.25,
            "realtime": True,
            "channels": 1,
        }
        assert isinstance(ready["session_id"], str) and ready["session_id"]

        # text + flush: the fragment is spoken before the rest arrives
        await send_json(conn, {"type": "text", "text": "Well, here is"})
        await send_json(conn, {"type": "flush"})
        got = await collect(conn, until=("audio",), within=20)
        await send_json(conn, {"type": "text", "text": " the rest of it."})
        await send_json(conn, {"type": "end"})
        await collect(conn, within=20, into=got)
        check_utterance(got)
        assert segment_texts(got) == ["Well, here is", "the rest of it."]
        assert {len(f) for f in got.frames} == {882 * 2}  # 40 ms frames

        # cancel with nothing in progress: cancelled with zeros, not an error
        await send_json(conn, {"type": "cancel"})
        cancelled = (await collect(conn, within=5)).one("cancelled")
        assert cancelled == {
            "type": "cancelled",
            "audio_sent_ms": 0.0,
            "spoken_text": "",
            "unspoken_text": "",
        }

        # a later start changes only the fields it names
        await send_json(conn, {"type": "start", "speed": 0.75})
        ready2 = (await collect(conn, until=("ready",), within=5)).one("ready")
        assert (ready2["frame_ms"], ready2["speed"]) == (40, 0.75)
        assert ready2["session_id"] == ready["session_id"]

        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        again = await collect(conn, within=20)
        check_utterance(again)
        assert "ready" not in again.types  # ready answers start, not every utterance


async def test_token_by_token_input_gives_identical_segments_and_audio(
    tight: RunningServer,
) -> None:
    start = {"voice": DET_VOICE}
    whole = await speak(tight.ws, TEXT, start)
    streamed = await speak(tight.ws, tokens(TEXT), start)

    whole_metrics, streamed_metrics = check_utterance(whole), check_utterance(streamed)
    assert segment_texts(streamed) == segment_texts(whole) == TEXT_SEGMENTS
    # Chunk-invariant splitter + deterministic voice: not "close", identical.
    assert streamed_metrics["audio_ms"] == whole_metrics["audio_ms"]
    assert b"".join(streamed.frames) == b"".join(whole.frames)
    offsets = [s["audio_offset_ms"] for s in whole.of_type("segment")]
    assert [s["audio_offset_ms"] for s in streamed.of_type("segment")] == offsets


# --------------------------------------------------------------------- cancel
async def test_cancel_mid_stream_stops_audio_and_reports_what_was_sent(
    server: RunningServer,
) -> None:
    async with connect(server.ws) as conn:
        await send_json(conn, {"type": "text", "text": LONG_TEXT})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, until=("audio",), within=20)
        for _ in range(30):  # let ~600 ms of audio arrive; the text lasts ~40 s
            await collect(conn, until=("audio",), within=10, into=got)
        await send_json(conn, {"type": "cancel"})
        await collect(conn, within=10, into=got)

        cancelled = got.final
        assert cancelled is not None and cancelled["type"] == "cancelled", got.summary()
        assert got.types.count("cancelled") == 1 and "done" not in got.types
        late = await read_for(conn, 0.5)
        assert late.events == [], f"after cancelled: {late.summary()}"

        received_ms = got.audio_bytes / 2 * 1000 / NATIVE_RATE
        assert received_ms >= 620
        assert cancelled["audio_sent_ms"] == pytest.approx(received_ms, abs=MS_ROUNDING)
        spoken, unspoken = cancelled["spoken_text"], cancelled["unspoken_text"]
        assert spoken and unspoken
        assert words(spoken) + words(unspoken) == words(LONG_TEXT)
        announced = " ".join(segment_texts(got))
        assert announced.startswith(spoken)

        # the next text starts a fresh utterance on the same connection
        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        after = await collect(conn, within=20)
        check_utterance(after)
        assert segment_texts(after) == [SHORT]


# -------------------------------------------------------------------- formats
@pytest.mark.parametrize(
    ("encoding", "rate", "frame_ms"),
    [
        ("pcm_s16le", None, 20),
        ("pcm_s16le", None, 10),  # 220.5 samples: the frame is rounded to 220
        ("pcm_s16le", None, 60),
        ("pcm_f32le", None, 20),
        ("mulaw", 8000, 20),
        ("mulaw", 8000, 60),
        ("alaw", 8000, 10),
        ("alaw", 8000, 20),
        ("pcm_s16le", 48000, 10),
        ("pcm_s16le", 48000, 20),
        ("pcm_s16le", 48000, 60),
    ],
)
async def test_audio_format_byte_counts(
    server: RunningServer, encoding: AudioEncoding, rate: int | None, frame_ms: int
) -> None:
    start: dict[str, Any] = {"format": encoding, "frame_ms": frame_ms}
    if rate is not None:
        start["sample_rate"] = rate
    got = await speak(server.ws, "Hello there, my friend.", start)

    rate = rate or NATIVE_RATE
    width = WIDTH[encoding]
    ready = got.one("ready")
    assert (ready["format"], ready["sample_rate"], ready["frame_ms"]) == (encoding, rate, frame_ms)
    metrics = check_utterance(got, rate=rate, width=width)
    sizes = {len(f) for f in got.frames}
    assert len(sizes) == 1, f"frames of different sizes: {sizes}"
    frame_samples = sizes.pop() / width
    assert frame_samples == round(frame_samples)
    assert abs(frame_samples - rate * frame_ms / 1000) <= 0.5
    total_samples = got.audio_bytes / width
    assert total_samples == len(got.frames) * frame_samples
    assert metrics["audio_ms"] == pytest.approx(total_samples * 1000 / rate, abs=MS_ROUNDING)
    assert metrics["audio_ms"] > 500
    samples = decode(b"".join(got.frames), encoding)
    assert np.all(np.isfinite(samples)) and np.max(np.abs(samples)) <= 1.0
    assert np.max(np.abs(samples)) > 0.05, "the audio is silent"


async def test_speed_changes_audio_length(tight: RunningServer) -> None:
    lengths: dict[float, float] = {}
    for speed in (1.0, 0.5, 2.0):
        got = await speak(tight.ws, SENTENCE, {"voice": DET_VOICE, "speed": speed})
        assert got.one("ready")["speed"] == speed
        lengths[speed] = check_utterance(got)["audio_ms"]

    # Not exactly 2x / 0.5x: Piper rounds each phoneme's scaled duration up to
    # whole frames, so length does not scale linearly (about 1.7x and 0.63x here,
    # the same with the raw ONNX model and no server involved).
    assert 1.5 <= lengths[0.5] / lengths[1.0] <= 2.1, lengths
    assert 0.45 <= lengths[2.0] / lengths[1.0] <= 0.75, lengths


async def test_done_metrics_are_present_and_sane(server: RunningServer) -> None:
    got = await speak(server.ws, TEXT)

    metrics = check_utterance(got)
    assert set(metrics) == {
        "ttft_ms",
        "ttfa_from_first_text_ms",
        "audio_ms",
        "synth_ms",
        "rtf",
        "segments",
        "underruns",
    }
    assert metrics["segments"] == 3
    assert isinstance(metrics["underruns"], int) and metrics["underruns"] >= 0
    assert 0 < metrics["ttft_ms"] <= metrics["ttfa_from_first_text_ms"] < 10_000
    assert metrics["audio_ms"] > 2000
    assert metrics["synth_ms"] > 0
    assert metrics["rtf"] > 0
    assert metrics["rtf"] == pytest.approx(metrics["synth_ms"] / metrics["audio_ms"], abs=1e-3)


# ----------------------------------------------------------- flush and idle
async def test_flush_speaks_a_fragment_without_end(tight: RunningServer) -> None:
    async with connect(tight.ws) as conn:
        await send_json(conn, {"type": "text", "text": FRAGMENT})
        await collect(conn, until=("ready",), within=5)
        held = await read_for(conn, 0.8)
        assert held.events == [], f"spoken before flush: {held.summary()}"

        await send_json(conn, {"type": "flush"})
        got = await collect(conn, until=("audio",), within=10)
        assert segment_texts(got) == [FRAGMENT]

        await send_json(conn, {"type": "end"})
        await collect(conn, within=20, into=got)
        assert check_utterance(got)["segments"] == 1


async def test_idle_flush_speaks_a_fragment_after_the_deadline(server: RunningServer) -> None:
    """--flush-ms after the last text, what is buffered is spoken, but for a last word
    that may still grow (a stream that stalled mid-token), which waits 4 x longer."""
    async with connect(server.ws) as conn:
        await send_json(conn, {"type": "start"})
        await collect(conn, until=("ready",), within=5)

        sent_at = time.monotonic()
        await send_json(conn, {"type": "text", "text": FRAGMENT})
        got = await collect(conn, until=("audio",), within=10)
        segment_at = got.times[got.types.index("segment")]
        # --flush-ms is 300: not before it (server time starts after our send) ...
        assert segment_at - sent_at >= 0.29, segment_at - sent_at
        assert got.times[-1] - sent_at < 3.0  # ... and soon after it

        # ... up to its last word: "fragment" may still grow, and waits 4 x --flush-ms.
        assert segment_texts(got) == ["Well here is a"]
        await collect(conn, until=("segment",), within=10, into=got)
        word_at = got.times[-1]
        assert 1.19 <= word_at - sent_at < 4.0, word_at - sent_at

        await send_json(conn, {"type": "end"})
        await collect(conn, within=20, into=got)
        assert check_utterance(got)["segments"] == 2
        assert segment_texts(got) == ["Well here is a", "fragment"]


# --------------------------------------------------------------------- errors
BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{", "bad_json"),
    ("not json at all", "bad_json"),
    (b"\x00\x01 binary", "binary_not_allowed"),
    ("[1, 2]", "bad_message"),
    ('"text"', "bad_message"),
    ("null", "bad_message"),
    ('{"text": "no type"}', "bad_message"),
    ('{"type": 5}', "bad_message"),
    ('{"type": "speak"}', "unknown_type"),
    ('{"type": "text"}', "bad_field"),
    ('{"type": "text", "text": 5}', "bad_field"),
    ('{"type": "text", "text": ""}', "bad_field"),
    ('{"type": "text", "text": "\\ud800"}', "bad_field"),
    ('{"type": "start", "format": "mp3"}', "bad_field"),
    ('{"type": "start", "sample_rate": 7999}', "bad_field"),
    ('{"type": "start", "sample_rate": 48001}', "bad_field"),
    ('{"type": "start", "sample_rate": 22050.5}', "bad_field"),
    ('{"type": "start", "sample_rate": "8000"}', "bad_field"),
    ('{"type": "start", "sample_rate": true}', "bad_field"),
    ('{"type": "start", "frame_ms": 9}', "bad_field"),
    ('{"type": "start", "frame_ms": 201}', "bad_field"),
    ('{"type": "start", "speed": 0.49}', "bad_field"),
    ('{"type": "start", "speed": 2.01}', "bad_field"),
    ('{"type": "start", "speed": NaN}', "bad_field"),
    ('{"type": "start", "speed": "fast"}', "bad_field"),
    ('{"type": "start", "voice": 5}', "bad_field"),
    ('{"type": "start", "token": 5}', "bad_field"),
    ('{"type": "start", "voice": "nobody"}', "unknown_voice"),
    ('{"type": "flush"}', "no_utterance"),
    ('{"type": "end"}', "no_utterance"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=[repr(f)[:40] for f, _ in BAD_FRAMES])
async def test_bad_message_gets_error_and_session_goes_on(
    server: RunningServer, frame: str | bytes, code: str
) -> None:
    async with connect(server.ws) as conn:
        await expect_error(conn, frame, code)
        await still_speaks(conn)


async def test_messages_out_of_turn_get_bad_state(server: RunningServer) -> None:
    async with connect(server.ws) as conn:
        await send_json(conn, {"type": "text", "text": "One sentence here."})
        got = await collect(conn, until=("ready",), within=5)
        start = json.dumps({"type": "start", "speed": 2.0})
        await expect_error(conn, start, "bad_state", into=got)  # start mid-utterance
        await send_json(conn, {"type": "text", "text": " And the end."})
        await send_json(conn, {"type": "end"})
        too_late = json.dumps({"type": "text", "text": " Too late."})
        await expect_error(conn, too_late, "bad_state", into=got)  # text after end
        await collect(conn, within=20, into=got)
        check_utterance(got)
        assert segment_texts(got) == ["One sentence here.", "And the end."]
        await still_speaks(conn)


async def test_text_limits(tight: RunningServer) -> None:
    accepted = "Yes, I can do that for you now."  # 31 characters
    at_limit = " yes" * (MAX_TEXT_CHARS // 4)
    assert len(at_limit) == MAX_TEXT_CHARS < MAX_UTTERANCE_CHARS < len(accepted) + len(at_limit)
    await no_sessions_open(tight)
    async with connect(tight.ws) as conn:
        too_long = json.dumps({"type": "text", "text": "x" * (MAX_TEXT_CHARS + 1)})
        error = await expect_error(conn, too_long, "text_too_long")
        assert "message" in error["message"]
        await send_json(conn, {"type": "text", "text": accepted})
        got = await collect(conn, until=("ready",), within=5)
        # at the message limit, but over the utterance's: refused whole, the utterance goes on
        over = json.dumps({"type": "text", "text": at_limit})
        error = await expect_error(conn, over, "text_too_long", into=got)
        assert "utterance" in error["message"]
        await send_json(conn, {"type": "end"})
        await collect(conn, within=30, into=got)
        check_utterance(got)
        assert segment_texts(got) == [accepted]


async def test_oversized_frame_closes_with_1009(tight: RunningServer) -> None:
    await no_sessions_open(tight)
    async with connect(tight.ws) as conn:
        await send_json(conn, {"type": "text", "text": "a" * MAX_MESSAGE_BYTES})
        got = await wait_closed(conn)
        assert got.events == []
        assert conn.close_code == 1009


async def test_sessions_over_max_sessions_are_closed_with_1013(tight: RunningServer) -> None:
    await no_sessions_open(tight)
    async with connect(tight.ws) as first, connect(tight.ws) as second:
        for conn in (first, second):  # both registered: each answered a message
            await send_json(conn, {"type": "start"})
            await collect(conn, until=("ready",), within=5)
        async with connect(tight.ws) as third:
            got = await wait_closed(third)
            assert got.events == []
            assert third.close_code == 1013
        await still_speaks(first)
    await no_sessions_open(tight)
    check_utterance(await speak(tight.ws, SHORT))


async def test_session_undisturbed_by_a_neighbour_sending_garbage(tight: RunningServer) -> None:
    await no_sessions_open(tight)
    solo = await speak(tight.ws, TEXT, {"voice": DET_VOICE})
    await no_sessions_open(tight)
    garbage: list[str | bytes] = [frame for frame, _ in BAD_FRAMES] * 3

    async def pester() -> list[str]:
        async with connect(tight.ws) as conn:
            codes: list[str] = []
            for frame in garbage:
                await conn.send(frame)
                got = await collect(conn, until=("error",), within=5)
                codes.append(got.messages[-1]["code"])
            await still_speaks(conn)
            return codes

    victim, codes = await asyncio.gather(speak(tight.ws, TEXT, {"voice": DET_VOICE}), pester())

    assert codes == [code for _, code in BAD_FRAMES] * 3
    check_utterance(victim)
    assert segment_texts(victim) == segment_texts(solo)
    assert b"".join(victim.frames) == b"".join(solo.frames)


async def test_flushing_whitespace_adds_no_segment_and_no_silence(tight: RunningServer) -> None:
    reference = await speak(tight.ws, "Hello. World.", {"voice": DET_VOICE})
    async with connect(tight.ws) as conn:
        for message in (
            {"type": "start", "voice": DET_VOICE},
            {"type": "text", "text": "Hello."},
            {"type": "flush"},
            {"type": "text", "text": " "},
            {"type": "flush"},
            {"type": "text", "text": " World."},
            {"type": "end"},
        ):
            await send_json(conn, message)
        got = await collect(conn, within=20)

    assert segment_texts(got) == segment_texts(reference) == ["Hello.", "World."]
    assert b"".join(got.frames) == b"".join(reference.frames)


# ------------------------------------------------------------ origin, token
async def test_handshake_from_other_origin_is_refused_with_403(guarded: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            f"{guarded.ws}?token={TOKEN}", open_timeout=5, origin=Origin("http://evil.example")
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_client_without_origin_header_is_allowed(guarded: RunningServer) -> None:
    """Browsers always send Origin; CLIs and bots send none and are not refused by --origins."""
    got = await speak(f"{guarded.ws}?token={TOKEN}", SHORT)
    check_utterance(got)


async def test_query_token_from_allowed_origin_works(guarded: RunningServer) -> None:
    got = await speak(f"{guarded.ws}?token={TOKEN}", SHORT, origin=GOOD_ORIGIN)
    check_utterance(got)


async def test_start_token_works(guarded: RunningServer) -> None:
    got = await speak(guarded.ws, SHORT, {"token": TOKEN}, origin=GOOD_ORIGIN)
    check_utterance(got)


async def test_wrong_query_token_is_refused_with_401(guarded: RunningServer) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{guarded.ws}?token=wrong", origin=GOOD_ORIGIN, open_timeout=5):
            pass
    assert refused.value.response.status_code == 401


@pytest.mark.parametrize(
    "message",
    [
        {"type": "text", "text": SHORT},
        {"type": "cancel"},
        {"type": "start", "token": "wrong"},
        {"type": "start"},
    ],
)
async def test_without_token_the_session_is_closed_unauthorized(
    guarded: RunningServer, message: dict[str, Any]
) -> None:
    async with connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=5) as conn:
        await send_json(conn, message)
        got = await wait_closed(conn)
        assert [m["code"] for m in got.messages] == ["unauthorized"], got.messages
        assert got.frames == []
        assert conn.close_code == 1008


async def test_the_reply_after_a_barge_in_starts_as_fast_as_any(server: RunningServer) -> None:
    """A producer waiting (seconds ahead of its listener) wakes at the cancel.

    It used to sleep out its poll (up to 250 ms) first, so the next reply's
    first audio came 81-249 ms after its text instead of ~50 ms.
    """
    after_cancel: list[float] = []
    fresh: list[float] = []
    async with connect(server.ws, open_timeout=10, max_size=None) as conn:
        for _ in range(5):
            await send_json(conn, {"type": "text", "text": LONG_TEXT})
            await send_json(conn, {"type": "end"})
            await read_for(conn, 1.0)  # 1 s in, the producer is 4 s ahead and waiting
            await send_json(conn, {"type": "cancel"})
            await collect(conn, until=("cancelled",))
            await send_json(conn, {"type": "text", "text": SENTENCE})
            await send_json(conn, {"type": "end"})
            done = (await collect(conn)).final
            assert done is not None and done["type"] == "done", done
            after_cancel.append(done["metrics"]["ttft_ms"])
            await send_json(conn, {"type": "text", "text": SENTENCE})
            await send_json(conn, {"type": "end"})
            done = (await collect(conn)).final
            assert done is not None and done["type"] == "done", done
            fresh.append(done["metrics"]["ttft_ms"])
    after, alone = sorted(after_cancel)[2], sorted(fresh)[2]
    assert after < alone + 60, (after_cancel, fresh)
