"""SIGTERM under load: long utterances drain within --grace; past it, 1001 and exit 0.

``tests/test_server_lifecycle.py`` covers the basic drain (8 short utterances,
/readyz, refusal, 1001, exit 0). This adds what it does not:

- utterances of ~15 s each, read in real time, all finish within ``--grace``
  (so the drain waits for real speech, not for buffered bytes);
- /readyz is 503 before the first of them is done;
- an utterance still receiving text at SIGTERM takes its remaining text;
- an idle client is closed with 1001 at once (its next utterance should go to
  another replica); one that tries a new utterance first gets at most
  ``server_draining``, never audio;
- when ``--grace`` runs out first, every connection (one that does not read
  included) is closed with 1001 at the deadline and the process still exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from conftest import RunningServer, http_get
from probes import RawClient, text_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import Collected, check_utterance, collect, send_json, wait_closed

from client.load_texts import TEXTS

pytestmark = pytest.mark.timeout(150)

ServerFactory = Callable[..., RunningServer]
SPEAKERS = 8
GRACE_S = 30.0
SHORT_GRACE_S = 2.0
CLOSE_TIMEOUT_S = 5.0  # server.py: websockets close_timeout, for a client that cannot answer
STREAMED = (
    "The storm rolled in over the hills before noon.",
    "By evening, every road into town was under water.",
)


def first_sentences(text: str, at_least: int) -> str:
    """The shortest run of ``text``'s first sentences with at least ``at_least`` characters."""
    sentences = re.split(r"(?<=[.?!]) ", text)
    out = ""
    for sentence in sentences:
        out = f"{out} {sentence}".strip()
        if len(out) >= at_least:
            break
    return out


async def readyz(srv: RunningServer) -> int | None:
    """Status of /readyz, or None when nothing answers (the port is closed)."""
    try:
        status, _ = await asyncio.to_thread(http_get, srv.http + "/readyz", 1.0)
        return status
    except OSError:
        return None


async def wait_for_503(srv: RunningServer) -> float:
    """Poll /readyz (bounded) until it is 503; when that was seen (monotonic)."""
    for _ in range(200):
        if await readyz(srv) == 503:
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise AssertionError("/readyz did not turn 503 after SIGTERM")


async def new_connection_refused(srv: RunningServer) -> str:
    """Try a new WebSocket; how it was refused (HTTP 503 or no listener)."""
    try:
        async with connect(srv.ws, open_timeout=5):
            pass
    except InvalidStatus as exc:
        assert exc.response.status_code == 503
        return "503"
    except OSError:
        return "refused"
    raise AssertionError("a new connection was accepted while draining")


async def exit_code(srv: RunningServer, within: float) -> int:
    return await asyncio.to_thread(srv.process.wait, within)


async def test_long_utterances_finish_within_grace_and_new_work_is_refused(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory("--grace", str(GRACE_S))
    texts = [first_sentences(TEXTS[i % len(TEXTS)], 280) for i in range(SPEAKERS)]
    async with AsyncExitStack() as stack:

        async def open_() -> ClientConnection:
            return await stack.enter_async_context(connect(srv.ws, open_timeout=10))

        speakers = [await open_() for _ in range(SPEAKERS)]
        for conn, text in zip(speakers, texts, strict=True):
            await send_json(conn, {"type": "text", "text": text})
            await send_json(conn, {"type": "end"})
        heard = await asyncio.gather(
            *(collect(conn, until=("audio",), within=30) for conn in speakers)
        )
        streaming = await open_()  # mid-utterance at SIGTERM: more text is still to come
        await send_json(streaming, {"type": "text", "text": STREAMED[0]})
        streamed = await collect(streaming, until=("audio",), within=30)
        idle = await open_()  # connected, no utterance

        srv.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        went_503 = await wait_for_503(srv)
        refused = await new_connection_refused(srv)

        with contextlib.suppress(ConnectionClosed):  # it may be closed already: fine
            await send_json(idle, {"type": "text", "text": "Are you still there?"})
        refusal = await wait_closed(idle, within=5)
        idle_closed_s = time.monotonic() - signalled
        await send_json(streaming, {"type": "text", "text": " " + STREAMED[1]})
        await send_json(streaming, {"type": "end"})

        # Read everything in real time (as a player would) until done, then the close.
        await asyncio.gather(
            *(
                collect(conn, within=GRACE_S, into=got)
                for conn, got in zip([*speakers, streaming], [*heard, streamed], strict=True)
            )
        )
        closes = await asyncio.gather(
            *(wait_closed(conn, within=GRACE_S) for conn in [*speakers, streaming])
        )
        done_at = [got.times[-1] for got in heard]

    code = await exit_code(srv, GRACE_S)
    drained_s = time.monotonic() - signalled
    audio_s = [check_utterance(got)["audio_ms"] / 1000 for got in heard]
    report = (
        f"{SPEAKERS} x {min(audio_s):.1f}-{max(audio_s):.1f} s utterances; /readyz 503 after "
        f"{(went_503 - signalled) * 1000:.0f} ms, idle client closed after "
        f"{idle_closed_s:.2f} s ({refusal.summary() or 'no event'}), "
        f"first done {min(done_at) - signalled:.1f} s, "
        f"last {max(done_at) - signalled:.1f} s after SIGTERM; new connection: {refused}; "
        f"exit {code} after {drained_s:.1f} s (grace {GRACE_S:g} s)"
    )
    print(report)
    assert code == 0, srv.log()[-3000:]
    assert min(audio_s) > 12.0, report  # long utterances, really spoken to the end
    assert went_503 < min(done_at), report
    assert max(done_at) - signalled < GRACE_S, report
    assert drained_s > 5.0, report  # the drain waited for speech still to be played
    # A new utterance during the drain: at most refused, never started.
    assert all(e == {**e, "type": "error", "code": "server_draining"} for e in refusal.messages)
    assert refusal.frames == [], refusal.summary()
    assert idle_closed_s < 2.0, report
    assert [s["text"] for s in check_segments(streamed)] == list(STREAMED)
    assert all(c.events == [] for c in closes), [c.summary() for c in closes]
    assert [conn.close_code for conn in [*speakers, streaming, idle]] == [1001] * (SPEAKERS + 2)
    assert f"draining: {SPEAKERS + 2} session(s)" in srv.log()


def check_segments(got: Collected) -> list[dict[str, Any]]:
    check_utterance(got)
    return got.of_type("segment")


async def test_grace_expiry_closes_every_connection_1001_and_exits_0(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory("--grace", str(SHORT_GRACE_S))
    async with AsyncExitStack() as stack:
        speakers = [
            await stack.enter_async_context(connect(srv.ws, open_timeout=10)) for _ in range(3)
        ]
        for i, conn in enumerate(speakers):  # ~25 s each: far longer than the grace
            await send_json(conn, {"type": "text", "text": TEXTS[i]})
            await send_json(conn, {"type": "end"})
        heard = await asyncio.gather(
            *(collect(conn, until=("audio",), within=30) for conn in speakers)
        )
        deaf = await RawClient.connect(srv.port, rcvbuf=4096)  # never reads, cannot answer
        assert await deaf.handshake(srv.port) == 101
        deaf.send(text_frame({"type": "text", "text": TEXTS[3]}))
        deaf.send(text_frame({"type": "end"}))
        await deaf.drain()
        await asyncio.sleep(1.0)  # its audio is flowing into buffers nobody reads

        srv.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def until_closed(conn: ClientConnection, got: Collected) -> float:
            """Read on (in real time) until the server closes; seconds after SIGTERM."""
            await collect(conn, until=(), within=SHORT_GRACE_S + 10, into=got)
            return time.monotonic() - signalled

        closed_s = await asyncio.gather(
            *(until_closed(conn, got) for conn, got in zip(speakers, heard, strict=True))
        )
        codes = [conn.close_code for conn in speakers]
        code = await exit_code(srv, SHORT_GRACE_S + CLOSE_TIMEOUT_S + 10)
        exited_s = time.monotonic() - signalled
        deaf.abort()

    report = (
        f"grace {SHORT_GRACE_S:g} s: speakers closed {codes} after ~{max(closed_s):.1f} s, "
        f"exit {code} after {exited_s:.1f} s (one client not reading)"
    )
    print(report)
    assert codes == [1001] * len(speakers), report
    assert all("done" not in got.types for got in heard), report  # cut off, not finished
    assert SHORT_GRACE_S - 0.5 < max(closed_s) < SHORT_GRACE_S + 2.0, report
    assert code == 0, srv.log()[-3000:]
    # At the deadline: the close handshake, which the deaf client cannot answer, is bounded.
    assert exited_s < SHORT_GRACE_S + CLOSE_TIMEOUT_S + 3.0, report
    assert "stopped" in srv.log()
