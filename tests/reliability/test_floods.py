"""Floods: too many connections, too many messages. The server refuses the excess
at once and keeps serving the sessions it accepted.

- ``crowded`` (``--max-sessions 3``): connections over the limit are closed
  with 1013 right after the handshake, while the three accepted sessions speak;
- ``refusing`` (``--max-sessions 1 --when-full 503``): the handshake itself is
  refused with HTTP 503;
- ``limited`` (``--rate-limit 20``, burst 40): a burst of 200 messages is
  closed with 1008 after 40 over the limit; a neighbour speaks as fast as
  alone. Over the limit a ``text`` is refused with ``rate_limited`` naming it
  (``unspoken_text``), while ``start``/``end``/``flush``/``cancel`` still
  apply: none is lost.

Every loop is bounded; connection counts are small and fixed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from conftest import RunningServer, start_server
from rhelpers import (
    DET_VOICE,
    SHORT,
    TEXT,
    Timed,
    assert_ttft_undisturbed,
    deterministic_voice,
    median,
    neighbour_ttfts,
    no_sessions_open,
    timed_speak,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from wsclient import Collected, check_utterance, collect, send_json, wait_closed

pytestmark = pytest.mark.timeout(120)

MAX_SESSIONS = 3
OVER = 7  # the 4th to the 10th connection
WAVE = 40  # then a flood of connections at once
RATE = 20  # messages per second; burst 2 x RATE
BURST = 200


def _server(
    factory: pytest.TempPathFactory, name: str, *flags: str, det: bool = False
) -> RunningServer:
    folder = factory.mktemp(name)
    extra: list[str] = []
    if det:
        voices = folder / "voices"
        voices.mkdir()
        deterministic_voice(voices)
        extra = ["--voices", str(voices)]
    return start_server(folder, *flags, *extra)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = _server(tmp_path_factory, "crowded", "--max-sessions", str(MAX_SESSIONS))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = _server(tmp_path_factory, "refusing", "--max-sessions", "1", "--when-full", "503")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = _server(tmp_path_factory, "limited", "--rate-limit", str(RATE), det=True)
    yield s
    s.stop()


# ------------------------------------------------------------- max sessions
async def refused_with_1013(url: str) -> float:
    """Connect; the server must close with 1013 before any event. Seconds it took."""
    began = time.monotonic()
    async with connect(url, open_timeout=15) as conn:
        got = await wait_closed(conn, within=15)
        took = time.monotonic() - began
        assert got.events == [] and conn.close_code == 1013, (got.summary(), conn.close_code)
    return took


async def test_connections_over_max_sessions_get_1013_at_once(crowded: RunningServer) -> None:
    await no_sessions_open(crowded.http)
    async with (
        connect(crowded.ws, open_timeout=10) as a,
        connect(crowded.ws, open_timeout=10) as b,
        connect(crowded.ws, open_timeout=10) as c,
    ):
        accepted = (a, b, c)
        for conn in accepted:  # registered: each answered a message
            await send_json(conn, {"type": "start"})
            await collect(conn, until=("ready",), within=10)
        for conn in accepted:  # the accepted sessions are speaking during the flood
            await send_json(conn, {"type": "text", "text": TEXT})
            await send_json(conn, {"type": "end"})
        over = await asyncio.gather(*(refused_with_1013(crowded.ws) for _ in range(OVER)))
        wave = await asyncio.gather(*(refused_with_1013(crowded.ws) for _ in range(WAVE)))
        spoken = await asyncio.gather(*(collect(conn, within=60) for conn in accepted))
        for got in spoken:
            check_utterance(got)
    print(
        f"\nFIGURES max-sessions {MAX_SESSIONS}: connections {MAX_SESSIONS + 1} to "
        f"{MAX_SESSIONS + OVER} closed 1013 in median {1000 * median(over):.1f} ms, "
        f"max {1000 * max(over):.1f} ms (connect to close); a wave of {WAVE} at once: "
        f"median {1000 * median(wave):.1f} ms, max {1000 * max(wave):.1f} ms; "
        f"the {MAX_SESSIONS} accepted sessions each completed their utterance"
    )
    assert max(over) < 3.0 and max(wave) < 5.0  # generous: the machine is shared
    await no_sessions_open(crowded.http)
    check_utterance(await collect_one(crowded.ws))  # a slot freed is a slot reused


async def collect_one(url: str) -> Collected:
    async with connect(url, open_timeout=10) as conn:
        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        return await collect(conn, within=30)


async def test_when_full_503_refuses_the_handshake(refusing: RunningServer) -> None:
    await no_sessions_open(refusing.http)
    async with connect(refusing.ws, open_timeout=10) as first:
        await send_json(first, {"type": "start"})
        await collect(first, until=("ready",), within=10)
        took: list[float] = []
        for _ in range(5):
            began = time.monotonic()
            with pytest.raises(InvalidStatus) as refused:
                async with connect(refusing.ws, open_timeout=10):
                    pass
            took.append(time.monotonic() - began)
            assert refused.value.response.status_code == 503
        await send_json(first, {"type": "text", "text": SHORT})
        await send_json(first, {"type": "end"})
        check_utterance(await collect(first, within=30))
    print(f"\nFIGURES when-full 503: refused in median {1000 * median(took):.1f} ms")
    assert max(took) < 3.0
    await no_sessions_open(refusing.http)
    check_utterance(await collect_one(refusing.ws))


# --------------------------------------------------------------- rate limit
async def flood(url: str, count: int = BURST) -> tuple[Collected, float, ClientConnection]:
    """Send ``count`` cancels at once; read until the server closes. (events, seconds, conn)"""
    async with connect(url, open_timeout=10) as conn:
        began = time.monotonic()
        for _ in range(count):
            await send_json(conn, {"type": "cancel"})
        got = await wait_closed(conn, within=20)
        return got, time.monotonic() - began, conn


async def test_message_flood_gets_rate_limited_then_1008_and_a_neighbour_is_unaffected(
    limited: RunningServer,
) -> None:
    start = {"voice": DET_VOICE}
    alone: list[Timed] = []
    beside: list[Timed] = []
    flooders: list[asyncio.Task[tuple[Collected, float, ClientConnection]]] = []
    await no_sessions_open(limited.http)
    for _ in range(3):  # alternate alone and beside a flood
        alone.append(await timed_speak(limited.ws, TEXT, start))
        flooders.append(asyncio.create_task(flood(limited.ws)))
        await asyncio.sleep(0.02)
        beside.append(await timed_speak(limited.ws, TEXT, start))
    closes: list[float] = []
    for got, seconds, conn in await asyncio.gather(*flooders):
        closes.append(seconds)
        answers = Counter(m.get("code", m["type"]) for m in got.messages)
        assert conn.close_code == 1008, (conn.close_code, answers)
        assert got.frames == []
        # The bucket starts full (2 x RATE) and refills at RATE/s while the burst is read;
        # more than 2 x RATE messages over the limit in a row close the connection. Those
        # over the limit are cancels: they still apply (a barge-in is never dropped).
        assert answers["cancelled"] >= 4 * RATE, answers
        assert set(answers) == {"cancelled"}, answers
        assert answers.total() < BURST, answers  # closed before the burst was served
    ttft_alone, ttft_beside = neighbour_ttfts(alone, beside)
    print(
        f"\nFIGURES rate limit {RATE}/s: burst of {BURST} -> {dict(answers)}, then 1008 "
        f"(seen by the client after median {median(closes):.2f} s); "
        f"neighbour TTFT median alone {ttft_alone:.1f} ms, beside the flood {ttft_beside:.1f} ms"
    )
    assert_ttft_undisturbed(ttft_alone, ttft_beside)


async def test_moderately_over_the_rate_refuses_texts_by_name_and_loses_nothing(
    limited: RunningServer,
) -> None:
    """5x the rate: some texts are refused, each named; every word is accounted for.

    Refusals never run 2 x RATE in a row (a token comes back every 1/RATE s), so
    the connection stays. What the server accepted is spoken (``segment``) or
    reported unspoken by the final ``cancelled``; what it refused is in the
    ``rate_limited`` errors' ``unspoken_text``. Together: every word sent, once.
    """
    words = [str(n) for n in range(100, 180)]
    async with connect(limited.ws, open_timeout=10) as conn:
        await send_json(conn, {"type": "start", "voice": DET_VOICE, "speed": 2.0})
        for word in words:
            await send_json(conn, {"type": "text", "text": word + " "})
            await asyncio.sleep(1 / (5 * RATE))
        await send_json(conn, {"type": "cancel"})
        got = await collect(conn, until=("cancelled",), within=30)
        assert not got.closed
        refused = [m for m in got.messages if m.get("code") == "rate_limited"]
        spoken = [m["text"] for m in got.messages if m["type"] == "segment"]
        cancelled = got.messages[-1]
        assert cancelled["type"] == "cancelled", cancelled
        accounted = (
            " ".join(spoken).split()
            + cancelled["unspoken_text"].split()
            + [w for m in refused for w in m["unspoken_text"].split()]
        )
        assert refused, "5x the rate must be over the limit"
        assert sorted(accounted) == sorted(words), (len(accounted), len(words))
        await asyncio.sleep(2 * RATE / RATE + 0.5)  # the bucket refills: the client complies
        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        check_utterance(await collect(conn, within=30))
    print(f"\nFIGURES rate limit, 5x: {len(refused)} of {len(words)} texts refused, named")


async def test_end_and_cancel_over_the_limit_still_apply(limited: RunningServer) -> None:
    # 2 x RATE texts empty the bucket; the `end` right behind them is over the limit.
    async with connect(limited.ws, open_timeout=10) as conn:
        await send_json(conn, {"type": "start", "voice": DET_VOICE, "speed": 2.0})
        for _ in range(2 * RATE + 5):
            await send_json(conn, {"type": "text", "text": "go "})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, within=60)
        assert got.messages[-1]["type"] == "done", got.messages[-3:]
        assert any(m.get("code") == "rate_limited" for m in got.messages)
        for _ in range(2 * RATE + 5):
            await send_json(conn, {"type": "text", "text": "go "})
        await send_json(conn, {"type": "cancel"})
        got = await collect(conn, until=("cancelled",), within=10)
        assert got.messages[-1]["type"] == "cancelled", got.messages[-3:]


async def test_a_flooder_is_disconnected_promptly(limited: RunningServer) -> None:
    await no_sessions_open(limited.http)
    got, seconds, conn = await flood(limited.ws)
    assert conn.close_code == 1008
    last_error = got.times[-1] - got.times[0]
    assert seconds < last_error + 2.0, f"closed {seconds:.2f} s after the flood began"
