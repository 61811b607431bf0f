"""Tests for the client library (client/events.py, client/session.py).

Event parsing, G.711 decoding and text re-cutting need no socket; the rest
runs against the real server (conftest), including restarts on the same
port and a server killed mid-utterance. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, RunningServer, free_port, http_get
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from client import (
    Audio,
    Cancelled,
    Done,
    Error,
    Ready,
    Segment,
    TTSClient,
    TTSConnectionError,
    TTSError,
    UtteranceInProgress,
)
from client.events import Event, Metrics, parse_server_message, to_pcm16
from client.retry import RetryPolicy
from client.stream import Stream
from client.text_pacing import coalesce
from engine.codecs import decode

LONG_TEXT = (
    "This is a long answer that keeps going for a while, so that there is time to interrupt it. "
    "It has a second sentence with more words in it. And a third one, which should never be "
    "spoken, because the listener has heard enough by then. A fourth sentence closes it."
)
STREAM_TIMEOUT_S = 60.0


async def collect(stream: Stream, limit_s: float = STREAM_TIMEOUT_S) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(limit_s):
        async for event in stream:
            events.append(event)
    return events


def audio_bytes(events: list[Event]) -> int:
    return sum(len(e.data) for e in events if isinstance(e, Audio))


async def tokens(text: str, delay_s: float = 0.01) -> AsyncIterator[str]:
    for word in text.split(" "):
        await asyncio.sleep(delay_s)
        yield word + " "


# ---------------------------------------------------------------- no socket
READY = Ready("abc", "v", "pcm_s16le", 22050, 20, 1.0)


def test_parses_every_server_message() -> None:
    ready_json = {
        "type": "ready",
        "session_id": "abc",
        "voice": "v",
        "format": "pcm_s16le",
        "sample_rate": 22050,
        "frame_ms": 20,
        "speed": 1.0,
        "channels": 1,
    }
    assert parse_server_message(json.dumps(ready_json), None) == READY
    assert parse_server_message(
        '{"type":"segment","index":2,"text":"Hi.","audio_offset_ms":40.0}', READY
    ) == Segment(2, "Hi.", 40.0)
    done = parse_server_message(
        '{"type":"done","metrics":{"ttft_ms":null,"ttfa_from_first_text_ms":null,'
        '"audio_ms":0.0,"synth_ms":0.2,"rtf":null,"segments":1}}',
        READY,
    )
    assert done == Done(Metrics(None, None, 0.0, 0.2, None, 1))
    late = parse_server_message(
        '{"type":"done","metrics":{"ttft_ms":40.0,"ttfa_from_first_text_ms":41.0,'
        '"audio_ms":900.0,"synth_ms":70.0,"rtf":0.08,"segments":1,"underruns":2}}',
        READY,
    )
    assert late == Done(Metrics(40.0, 41.0, 900.0, 70.0, 0.08, 1, underruns=2))
    assert parse_server_message(
        '{"type":"cancelled","audio_sent_ms":60.0,"spoken_text":"a","unspoken_text":"b"}', READY
    ) == Cancelled(60.0, "a", "b")
    failed = parse_server_message(
        '{"type":"error","code":"synthesis_failed","message":"x","segment":1,'
        '"unspoken_text":"Hi."}',
        READY,
    )
    assert failed == Error("synthesis_failed", "x", False, 1, "Hi.")
    assert parse_server_message('{"type":"error","code":"no_utterance","message":"m"}', READY) == (
        Error("no_utterance", "m", fatal=True)
    )
    assert parse_server_message(b"\x00\x01" * 441, READY) == Audio(
        b"\x00\x01" * 441, "pcm_s16le", 22050
    )
    assert parse_server_message('{"type":"from_the_future"}', READY) is None


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1]", '{"type":"segment"}', '{"type":"ready","format":"opus"}', b"\x00"],
)
def test_unreadable_server_messages_become_fatal_errors(frame: str | bytes) -> None:
    event = parse_server_message(frame, READY if frame != b"\x00" else None)
    assert isinstance(event, Error) and event.fatal and event.code == "bad_server_message"


def test_audio_knows_its_length_and_rejects_partial_samples() -> None:
    frame = Audio(bytes(160), "mulaw", 8000)
    assert (frame.samples, frame.duration_ms) == (160, 20.0)
    assert Audio(bytes(4 * 441), "pcm_f32le", 22050).duration_ms == 20.0
    with pytest.raises(ValueError):
        Audio(bytes(3), "pcm_s16le", 22050)
    with pytest.raises(ValueError):
        Audio(bytes(4), "opus", 8000)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["mulaw", "alaw"])
def test_g711_decoding_matches_the_server_codec(fmt: str) -> None:
    codes = bytes(range(256))
    ours = np.frombuffer(to_pcm16(codes, fmt), dtype="<i2")  # type: ignore[arg-type]
    servers = np.rint(decode(codes, fmt) * 32767).astype(np.int16)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ours, servers)


def test_float_audio_converts_like_the_server() -> None:
    floats = [0.0, 0.5, -0.5, 1.0, -1.0, 2.0, float("nan")]
    pcm = struct.unpack("<7h", to_pcm16(struct.pack("<7f", *floats), "pcm_f32le"))
    assert pcm == (0, 16384, -16384, 32767, -32767, 32767, 0)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=8, base_s=0.1, max_s=1.0)
    rng = random.Random(1)
    for attempt in range(8):
        cap = min(1.0, 0.1 * 2**attempt)
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jittered


async def _recut(pieces: list[str], interval_s: float, max_chars: int) -> list[str]:
    async def source() -> AsyncIterator[str]:
        for p in pieces:
            yield p

    return [p async for p in coalesce(source(), interval_s, max_chars)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=40), st.integers(1, 50))
def test_recutting_keeps_all_text_in_order(pieces: list[str], max_chars: int) -> None:
    out = asyncio.run(_recut(pieces, 0.0, max_chars))
    assert "".join(out) == "".join(pieces)
    assert all(0 < len(p) <= max_chars for p in out)


async def test_recutting_merges_a_fast_source() -> None:
    out = await _recut([f"w{i} " for i in range(500)], 0.05, 10_000)
    assert "".join(out) == "".join(f"w{i} " for i in range(500))
    assert len(out) <= 3  # an instant source is one or two messages, not 500


async def test_recutting_does_not_hold_text_while_the_source_pauses() -> None:
    async def slow() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        await asyncio.sleep(1.0)
        yield "c"

    arrivals: list[tuple[str, float]] = []
    start = time.monotonic()
    async for piece in coalesce(slow(), 0.05, 100):
        arrivals.append((piece, time.monotonic() - start))
    assert "".join(p for p, _ in arrivals) == "abc"
    assert next(t for p, t in arrivals if "b" in p) < 0.5


# ------------------------------------------------------------- real server
async def test_token_stream_completes_with_done_and_exact_audio(server: RunningServer) -> None:
    async with TTSClient(server.ws) as tts:
        stream = await tts.say(tokens("Hello there, my friend. This arrives word by word."))
        events = await collect(stream)
    ready, done = events[0], events[-1]
    assert isinstance(ready, Ready) and isinstance(done, Done)
    assert sum(isinstance(e, Done | Cancelled | Error) for e in events) == 1
    assert audio_bytes(events) == round(done.metrics.audio_ms * ready.sample_rate / 1000) * 2
    assert stream.received_bytes == audio_bytes(events)
    assert done.metrics.segments == sum(isinstance(e, Segment) for e in events) == 2
    assert stream.first_audio_s is not None and stream.first_audio_s > 0


async def test_segment_offsets_match_the_audio_before_them(server: RunningServer) -> None:
    async with TTSClient(server.ws, format="mulaw", sample_rate=8000, frame_ms=40) as tts:
        events = await collect(await tts.say("One. Two, three. Four!"))
    heard_ms = 0.0
    for event in events:
        if isinstance(event, Audio):
            assert (event.format, event.sample_rate, len(event.data)) == ("mulaw", 8000, 320)
            heard_ms += event.duration_ms
        elif isinstance(event, Segment):
            assert event.audio_offset_ms == pytest.approx(heard_ms)
    done = events[-1]
    assert isinstance(done, Done) and done.metrics.audio_ms == pytest.approx(heard_ms)


async def test_cancel_mid_stream_returns_cancelled_and_no_audio_after_it(
    server: RunningServer,
) -> None:
    async with TTSClient(server.ws) as tts:
        stream = await tts.say(LONG_TEXT)
        events: list[Event] = []
        cancelled: Cancelled | None = None
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            async for event in stream:
                events.append(event)
                if cancelled is None and audio_bytes(events) >= 20 * 882:  # 400 ms heard
                    cancelled = await tts.cancel()
                    assert not tts.busy
        assert isinstance(cancelled, Cancelled)
        assert events[-1] == cancelled  # the stream ends with the same event
        assert not any(isinstance(e, Audio) for e in events[events.index(cancelled) :])
        assert cancelled.spoken_text and "never be spoken" in cancelled.unspoken_text
        # Every frame the server sent reached us, and it said so.
        assert audio_bytes(events) == round(cancelled.audio_sent_ms * 22.05) * 2
        assert await tts.cancel() == Cancelled(0.0, "", "")  # nothing in progress
        # The connection is clean for the next utterance.
        after = await collect(await tts.say("Next one."))
        assert isinstance(after[-1], Done) and audio_bytes(after) > 0
        assert tts.connects == 1


async def test_cancel_before_any_text_reaches_the_server(server: RunningServer) -> None:
    async def never() -> AsyncIterator[str]:
        await asyncio.sleep(3600)
        yield "unreachable"

    async with TTSClient(server.ws) as tts:
        stream = await tts.say(never())
        async with asyncio.timeout(10):
            cancelled = await tts.cancel()
        assert cancelled == Cancelled(0.0, "", "")
        events = await collect(stream, 10)
        assert events[-1] == cancelled and audio_bytes(events) == 0
        assert isinstance((await collect(await tts.say("Still here.")))[-1], Done)


async def test_one_utterance_at_a_time(server: RunningServer) -> None:
    async with TTSClient(server.ws) as tts:
        await tts.say(LONG_TEXT)
        with pytest.raises(UtteranceInProgress):
            await tts.say("Not now.")
        await tts.cancel()
        assert isinstance((await collect(await tts.say("Now.")))[-1], Done)


async def test_empty_or_failing_input_ends_the_stream(server: RunningServer) -> None:
    async def failing() -> AsyncIterator[str]:
        yield "Hello there, this is the start of a reply. "
        await asyncio.sleep(0.5)
        raise RuntimeError("the model crashed")

    async def nothing() -> AsyncIterator[str]:
        for piece in ("", ""):
            yield piece

    async with TTSClient(server.ws) as tts:
        for source in ("", nothing()):
            events = await collect(await tts.say(source))
            assert isinstance(events[-1], Error) and events[-1].code == "empty_input"
        events = await collect(await tts.say(failing()))
        codes = [e.code for e in events if isinstance(e, Error)]
        assert codes == ["input_failed"] and isinstance(events[-1], Cancelled)
        assert isinstance((await collect(await tts.say("Recovered.")))[-1], Done)


async def test_settings_errors_raise_at_connect(server: RunningServer) -> None:
    with pytest.raises(TTSError) as info:
        async with TTSClient(server.ws, voice="nosuch"):
            pass
    assert info.value.code == "unknown_voice"
    with pytest.raises(TTSError) as info:
        async with TTSClient(server.ws, frame_ms=5):
            pass
    assert info.value.code == "bad_field"


async def test_unreachable_server_fails_fast_after_bounded_retries() -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/tts"
    started = time.monotonic()
    with pytest.raises(TTSConnectionError) as info:
        async with TTSClient(url, max_retries=3, retry_base_s=0.05):
            pass
    assert "4 attempts" in str(info.value) and time.monotonic() - started < 5


# ----------------------------------------------- restarts, kills, full server
def start_on_port(port: int, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``server.py`` on ``port`` (conftest picks its own ports; a restart needs the same one)."""
    cmd = [sys.executable, str(ROOT / "server.py"), "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*cmd, *flags], cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            if http_get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("server not ready")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class SamePort:
    """Servers started one after another on one port, all killed at the end of the test."""

    port: int
    log: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/tts"

    def start(self, *flags: str) -> subprocess.Popen[bytes]:
        process = start_on_port(self.port, self.log, *flags)
        self.started.append(process)
        return process


@pytest.fixture
def same_port(tmp_path: Path) -> Iterator[SamePort]:
    servers = SamePort(free_port(), tmp_path / "server.log")
    yield servers
    for process in servers.started:
        stop(process, signal.SIGKILL)


async def test_reconnects_after_a_restart_and_reports_a_lost_connection(
    same_port: SamePort,
) -> None:
    first = same_port.start()
    await asyncio.to_thread(wait_ready, same_port.port, first)
    async with TTSClient(same_port.url, max_retries=12, retry_base_s=0.1, retry_max_s=1.0) as tts:
        assert isinstance((await collect(await tts.say("Before the restart.")))[-1], Done)
        await asyncio.to_thread(stop, first)  # graceful: the server closes with 1001
        second = same_port.start()  # loading: refused, then 503, then ready
        events = await collect(await tts.say("After the restart."))  # backs off until ready
        assert isinstance(events[-1], Done) and audio_bytes(events) > 0
        assert tts.connects == 2
        # Killed mid-utterance: the stream ends with connection_lost, promptly.
        stream = await tts.say(LONG_TEXT)
        events = []
        started = time.monotonic()
        async with asyncio.timeout(30):
            async for event in stream:
                events.append(event)
                if isinstance(event, Audio) and len(events) == 10:
                    second.kill()
        final = events[-1]
        assert isinstance(final, Error) and final.code == "connection_lost" and final.fatal
        assert time.monotonic() - started < 15
        tts.retry = RetryPolicy(max_retries=2, base_s=0.05, max_s=0.1)
        with pytest.raises(TTSConnectionError):  # nothing listens now; bounded retries
            await tts.say("Nobody home.")


async def test_full_server_is_retried_then_refused_and_tokens_are_checked(
    same_port: SamePort,
) -> None:
    process = same_port.start("--max-sessions", "1", "--token", "sesame")
    await asyncio.to_thread(wait_ready, same_port.port, process)
    url = same_port.url
    with pytest.raises(TTSError) as info:
        async with TTSClient(url, token="wrong", retry_base_s=0.05):
            pass
    assert info.value.code == "unauthorized" and not isinstance(info.value, TTSConnectionError)
    first = TTSClient(url, token="sesame")
    await first.connect()
    with pytest.raises(TTSConnectionError) as full:  # 1013 on every attempt
        async with TTSClient(url, token="sesame", max_retries=2, retry_base_s=0.05):
            pass
    assert "1013" in str(full.value)
    waiting = TTSClient(url, token="sesame", max_retries=30, retry_base_s=0.05, retry_max_s=0.3)
    connecting = asyncio.create_task(waiting.connect())
    await asyncio.sleep(0.3)
    await first.close()  # a place frees up: the retrying client gets in
    async with asyncio.timeout(15):
        await connecting
    assert isinstance((await collect(await waiting.say("In at last.")))[-1], Done)
    await waiting.close()


# ------------------------------------------------------------ server findings
async def test_separate_small_bursts_over_the_rate_limit_do_not_close_the_session(
    server_factory: Callable[..., RunningServer],
) -> None:
    srv = server_factory("--rate-limit", "5")  # 5 messages/s, burst 10
    async with connect(srv.ws, proxy=None) as ws:
        for _ in range(4):  # each round: 13 messages at once, 3 over the burst; then refill
            for _ in range(13):
                await ws.send('{"type":"cancel"}')
            async with asyncio.timeout(10):
                replies = [json.loads(await ws.recv()) for _ in range(13)]
            # Over the limit a cancel still applies (a barge-in is never dropped).
            assert [r["type"] for r in replies] == ["cancelled"] * 13
            await asyncio.sleep(2.2)  # the bucket is full again: the client is compliant
        await ws.send('{"type":"cancel"}')
        async with asyncio.timeout(10):
            assert json.loads(await ws.recv())["type"] == "cancelled"


def _metric(srv: RunningServer, name: str) -> float:
    status, body = http_get(srv.http + "/metrics")
    assert status == 200
    match = re.search(rf"^{name} (\S+)$", body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_ttft_of_a_cancelled_utterance_reaches_the_metrics(server: RunningServer) -> None:
    before = _metric(server, "firstword_ttft_seconds_count")
    async with TTSClient(server.ws) as tts:
        stream = await tts.say(LONG_TEXT)
        async with asyncio.timeout(STREAM_TIMEOUT_S):
            async for event in stream:
                if isinstance(event, Audio):
                    await tts.cancel()  # audio was sent, so this utterance has a TTFT
    assert _metric(server, 'firstword_utterances_total{outcome="cancelled"}') >= 1
    assert _metric(server, "firstword_ttft_seconds_count") == before + 1
