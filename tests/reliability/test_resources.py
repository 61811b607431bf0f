"""One client must not take the server's memory: oversized frames, deflate bombs, slow readers.

All against one server on loopback with ``--send-timeout 3`` (the other limits
are the defaults: ``--max-message-bytes 65536``, 8 s of unsent audio per
session). Memory is the server process's resident set from ``/proc``, sampled
every 50 ms while the hostile clients act; every wait is bounded.

- **Oversized frames**: the frame header announces the size, so the server
  closes with 1009 after reading the header, before any of the payload is
  buffered; a message split into fragments counts as a whole.
- **Deflate bombs**: permessage-deflate is never negotiated, so nothing is
  ever inflated: a compressed (RSV1) frame is a protocol error (1002), and
  one over the limit is 1009 on its raw size.
- **Slow readers**: a client that asks for minutes of audio and never reads
  gets its synthesis paused (at most 8 s of unsent audio, plus the look-ahead),
  is closed ``--send-timeout`` s after its socket stops taking data (plus the
  5 s close handshake it cannot answer; one that reads again within it hears
  1008), and costs the other sessions nothing.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterator

import pytest
from conftest import RunningServer, start_server
from probes import (
    MB,
    NEEDS_PROC,
    OP_BINARY,
    OP_CONT,
    OP_TEXT,
    ProcStat,
    RawClient,
    RssSampler,
    cpu_contention,
    frame,
    mb,
    metrics,
    settle,
    stalled,
    text_frame,
)
from websockets.asyncio.client import connect
from wsclient import check_utterance, collect, read_for, send_json, speak

from client.load_texts import TEXTS
from engine.chunking import ChunkSchedule

pytestmark = [
    pytest.mark.timeout(180),
    NEEDS_PROC,
]

SEND_TIMEOUT_S = 3.0
MAX_MESSAGE_BYTES = 65536  # the default
MAX_UNSENT_S = 8.0  # protocol.session.Limits.max_unsent_ms
LOOKAHEAD_S = 4.0  # the default --lookahead-ms
SENTENCE = "Please call me back tomorrow morning."
SLOW_READERS = 4
# About five minutes of speech (TEXTS are ~25 s each), in one message under the limits.
LONG_TEXT = " ".join(TEXTS[i % len(TEXTS)] for i in range(12))
LONG_TEXT_AUDIO_S = 290.0  # roughly; only used to show how little of it was computed
# The fastest byte rate the protocol allows (4 bytes x 48 kHz = 192 kB/s): the socket
# buffers between server and client fill in seconds, not minutes.
HEAVY = {"type": "start", "format": "pcm_f32le", "sample_rate": 48000}
SLOW_READER = 'firstword_errors_total{code="slow_reader"}'
SYNTHESIZED = "firstword_audio_synthesized_seconds_total"
# The longest engine call's audio: ChunkSchedule.max_frames latent frames of 256 samples at
# the default voice's 22 050 Hz (2.97 s), with the 0.5 s of a sentence-end pause on top.
MAX_CHUNK_AUDIO_S = ChunkSchedule().max_frames * 256 / 22050 + 0.5
RSS_JUMP_LIMIT = 10 * MB  # hostile frames
SLOW_RSS_LIMIT = 50 * MB  # four slow readers with minutes of text each
# Once their sockets are full: 8 s unsent x 192 kB/s x 4 = 6 MB may still be computed.
STUCK_RSS_LIMIT = 20 * MB
CONTROL_S = 10.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("resources"), "--send-timeout", str(SEND_TIMEOUT_S))
    yield s
    s.stop()


async def still_serves(srv: RunningServer) -> float:
    """One utterance end to end; its TTFT (ms)."""
    return float(check_utterance(await speak(srv.ws, SENTENCE))["ttft_ms"])


# ------------------------------------------------------------------ deflate
async def test_permessage_deflate_is_never_negotiated(srv: RunningServer) -> None:
    raw = await RawClient.connect(srv.port)
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    assert await raw.handshake(srv.port, offer) == 101
    assert "sec-websocket-extensions" not in raw.response_headers, raw.response_headers
    raw.close()
    async with connect(srv.ws, open_timeout=10, compression="deflate") as conn:
        assert conn.response is not None
        assert conn.response.headers.get("Sec-WebSocket-Extensions") is None


def deflate_bomb(inflated: int) -> bytes:
    """A raw-deflate stream (as permessage-deflate sends it) of ``inflated`` zero bytes."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MB)
    body = b"".join(squeeze.compress(chunk) for _ in range(inflated // MB))
    return (body + squeeze.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 strips 00 00 ff ff


@pytest.mark.parametrize(
    ("inflated", "code"),
    [
        (50 * MB, 1002),  # ~50 kB on the wire: under the limit, refused as RSV1 unnegotiated
        (500 * MB, 1009),  # ~500 kB on the wire: over the limit on its raw size
    ],
    ids=["under-limit-1002", "over-limit-1009"],
)
async def test_deflate_bomb_is_refused_without_inflating(
    srv: RunningServer, inflated: int, code: int
) -> None:
    bomb = deflate_bomb(inflated)
    assert (len(bomb) > MAX_MESSAGE_BYTES) == (code == 1009), len(bomb)
    label = "message_too_big" if code == 1009 else "protocol_error"
    counted = f'firstword_errors_total{{code="{label}"}}'
    counted_before = (await metrics(srv.http)).get(counted, 0.0)
    before = ProcStat.of(srv.process.pid).rss
    sampler = RssSampler(srv.process.pid).start()
    clients = [await RawClient.connect(srv.port) for _ in range(8)]
    for client in clients:
        assert await client.handshake(srv.port) == 101
        client.send(frame(OP_TEXT, bomb, rsv1=True))
    codes = await asyncio.gather(*(c.close_code(within=10) for c in clients))
    for client in clients:
        client.close()
    peak = await sampler.stop()
    assert codes == [code] * len(clients)
    assert peak - before < RSS_JUMP_LIMIT, f"RSS {mb(before)} -> peak {mb(peak)}"
    # Each close is on /metrics under its code (websockets closes these itself).
    await settle(srv.http, lambda s: s.get(counted, 0.0) - counted_before >= len(clients), 10)
    await still_serves(srv)
    print(f"deflate bomb {mb(inflated)} ({len(bomb)} B): {codes[0]}, RSS +{mb(peak - before)}")


# ------------------------------------------------------------------ oversized
ANNOUNCED = 100 * MB
JUNK_SENT = 4 * MB  # what each client actually pushes after the header (the rest never comes)


def oversized_frames(kind: str) -> bytes:
    """Frames whose header (or running total) is over the limit, with a little payload."""
    if kind == "text":
        return frame(OP_TEXT, b"x" * 1024, announce=ANNOUNCED)
    if kind == "binary":
        return frame(OP_BINARY, b"\0" * 1024, announce=ANNOUNCED)
    if kind == "fragments":  # each fragment under the limit, the message over it
        piece = b"a" * (MAX_MESSAGE_BYTES // 2 - 100)
        return frame(OP_TEXT, piece, fin=False) + b"".join(
            frame(OP_CONT, piece, fin=False) for _ in range(3)
        )
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["text", "binary", "fragments"])
async def test_oversized_frame_is_closed_1009_before_the_payload_is_buffered(
    srv: RunningServer, kind: str
) -> None:
    before = ProcStat.of(srv.process.pid).rss
    sampler = RssSampler(srv.process.pid).start()
    clients = [await RawClient.connect(srv.port) for _ in range(20)]
    for client in clients:
        assert await client.handshake(srv.port) == 101
    sent_at = time.monotonic()
    for client in clients:
        client.send(oversized_frames(kind))
    codes = await asyncio.gather(*(c.close_code(within=5) for c in clients))
    answered_s = time.monotonic() - sent_at

    async def push_junk(client: RawClient) -> int:
        """Go on sending the announced payload as a hostile client would; bytes sent."""
        sent = 0
        try:
            for _ in range(JUNK_SENT // (64 * 1024)):
                client.send(bytes(64 * 1024))
                await client.drain(within=2)
                sent += 64 * 1024
        except (ConnectionError, TimeoutError):
            pass  # the server hung up: that is fine too
        return sent

    pushed = await asyncio.gather(*(push_junk(c) for c in clients))
    for client in clients:
        client.abort()
    peak = await sampler.stop()
    report = (
        f"{kind}: codes {set(codes)} in {answered_s * 1000:.0f} ms, junk pushed "
        f"{mb(sum(pushed))}, RSS {mb(before)} -> peak {mb(peak)} (+{mb(peak - before)})"
    )
    print(report)
    assert codes == [1009] * len(clients), report
    assert answered_s < 2.0, report
    assert peak - before < RSS_JUMP_LIMIT, report
    await still_serves(srv)


async def test_endless_header_is_refused_431_without_buffering(srv: RunningServer) -> None:
    before = ProcStat.of(srv.process.pid).rss
    client = await RawClient.connect(srv.port)
    # Read while sending: once the server has answered and closed, a reset may follow.
    answer_task = asyncio.create_task(client.reader.read(100))
    client.send(b"GET /v1/tts HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    try:
        for _ in range(64):  # up to 4 MB of one header line, until the server answers
            if answer_task.done():
                break
            client.send(b"a" * (64 * 1024))
            await client.drain(within=2)
    except (ConnectionError, TimeoutError):
        pass
    async with asyncio.timeout(5):
        answer = await answer_task
    client.abort()
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert ProcStat.of(srv.process.pid).rss - before < RSS_JUMP_LIMIT


# ------------------------------------------------------------------ slow readers
async def open_slow_reader(port: int) -> RawClient:
    """Ask for minutes of the heaviest audio, then never read (tiny receive buffer)."""
    client = await RawClient.connect(port, rcvbuf=4096)
    assert await client.handshake(port) == 101
    client.send(text_frame(HEAVY))
    client.send(text_frame({"type": "text", "text": LONG_TEXT}))
    client.send(text_frame({"type": "end"}))
    await client.drain()
    return client


async def normal_reader(srv: RunningServer, seconds: float) -> None:
    """The same request as a slow reader, read in real time for ``seconds``, then gone."""
    async with connect(srv.ws, open_timeout=10, max_size=None) as conn:
        await send_json(conn, HEAVY)
        await send_json(conn, {"type": "text", "text": LONG_TEXT})
        await send_json(conn, {"type": "end"})
        await read_for(conn, seconds)


async def probe_ttfts(srv: RunningServer, count: int) -> list[tuple[float, float]]:
    """``count`` one-sentence utterances in a row: (server TTFT ms, audio ms) of each."""
    out = []
    for _ in range(count):
        got = await speak(srv.ws, SENTENCE)
        metrics_ = check_utterance(got)
        out.append((float(metrics_["ttft_ms"]), float(metrics_["audio_ms"])))
    return out


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def test_slow_readers_are_paused_bounded_closed_and_harm_no_one(
    srv: RunningServer,
) -> None:
    pid = srv.process.pid
    # The control first: as many clients asking for the same, reading in real time. The
    # server warms onnxruntime's arenas for its engine workers before it is ready
    # (engine/warm.py); what normal readers still add (allocator arenas of threads that
    # start lazily) is in the baseline, so what is measured below is what a slow reader
    # costs beyond a normal one. Under CPU contention, so that contention later cannot
    # step that working set up.
    with cpu_contention():
        await asyncio.gather(*(normal_reader(srv, CONTROL_S) for _ in range(SLOW_READERS)))
    ttft_idle = median([t for t, _ in await probe_ttfts(srv, 5)])
    before = await metrics(srv.http)
    base_rss = ProcStat.of(pid).rss
    sampler = RssSampler(pid).start()

    started = time.monotonic()
    readers = [await open_slow_reader(srv.port) for _ in range(SLOW_READERS)]
    # Once their sockets are full, a normal client speaks; its TTFT must not notice them.
    await stalled(srv.http, "firstword_frames_sent_total", quiet_s=1.0, within=30)
    stalled_s = time.monotonic() - started
    stall_rss = ProcStat.of(pid).rss
    while_stuck = RssSampler(pid).start()  # from here on nothing may pile up
    probes = await probe_ttfts(srv, 5)
    at_verdict = await settle(
        srv.http,
        lambda s: s.get(SLOW_READER, 0) - before.get(SLOW_READER, 0) >= SLOW_READERS,
        within=60,
    )
    # The server has given up on all four and waits (its close timeout) to say so. Read
    # again now: what was in flight, then 1008 for each still in its close window (the
    # last one given up on surely is), or the end of the stream for one already aborted.
    ends = await asyncio.gather(*(r.close_code(within=10) for r in readers))
    for reader in readers:
        reader.abort()
    after = await settle(srv.http, lambda s: s["firstword_active_sessions"] == 0, within=30)
    closed_s = time.monotonic() - started
    peak = await sampler.stop()
    stuck_peak = await while_stuck.stop()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    probe_audio_s = sum(a for _, a in probes) / 1000
    slow_synth_s = (delta("firstword_audio_synthesized_seconds_total") - probe_audio_s) / len(
        readers
    )
    slow_sent_s = (delta("firstword_audio_sent_seconds_total") - probe_audio_s) / len(readers)
    ttft_busy = median([t for t, _ in probes])
    synth_after_verdict_s = after.get(SYNTHESIZED, 0.0) - at_verdict.get(SYNTHESIZED, 0.0)
    report = (
        f"{SLOW_READERS} slow readers stalled after {stalled_s:.1f} s, closed after "
        f"{closed_s:.1f} s (codes seen {ends}); each: "
        f"sent {slow_sent_s:.1f} s, synthesized {slow_synth_s:.1f} s of ~{LONG_TEXT_AUDIO_S:.0f} s"
        f" ({synth_after_verdict_s:.1f} s in all after the last was given up on);"
        f" RSS {mb(base_rss)} -> peak {mb(peak)} (+{mb(peak - base_rss)}), while stuck "
        f"{mb(stall_rss)} -> peak {mb(stuck_peak)} (+{mb(stuck_peak - stall_rss)}); "
        f"TTFT idle {ttft_idle:.1f} ms, beside slow readers {ttft_busy:.1f} ms "
        f"(each {[round(t) for t, _ in probes]})"
    )
    print(report)
    assert delta(SLOW_READER) == SLOW_READERS, report
    assert 1008 in ends and set(ends) <= {1008, None}, report
    # Closed send-timeout after the socket filled, plus the close handshake it cannot answer.
    assert closed_s < 30, report
    # Synthesis paused: at most 8 s unsent + the look-ahead beyond what left, far from all.
    assert slow_synth_s <= slow_sent_s + MAX_UNSENT_S + LOOKAHEAD_S + 2.0, report
    assert slow_synth_s < LONG_TEXT_AUDIO_S / 4, report
    # Given up on: synthesis stops at once, not after the close handshake (at most the
    # chunk each had inside a worker at that moment).
    assert synth_after_verdict_s <= SLOW_READERS * MAX_CHUNK_AUDIO_S, report
    assert peak - base_rss < SLOW_RSS_LIMIT, report
    assert stuck_peak - stall_rss < STUCK_RSS_LIMIT, report
    assert ttft_busy < max(2 * ttft_idle, ttft_idle + 100), report
    await still_serves(srv)


async def test_normal_client_reading_in_real_time_is_never_closed(srv: RunningServer) -> None:
    """The control: the same heavy format, read as it arrives, finishes with done."""
    async with connect(srv.ws, open_timeout=10, max_size=None) as conn:
        await send_json(conn, HEAVY)
        await send_json(conn, {"type": "text", "text": TEXTS[0][:120]})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, within=60)
    check_utterance(got, rate=48000, width=4)
