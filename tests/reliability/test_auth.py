"""Origins and tokens: pages from other origins are refused at the handshake, no audio
is produced without the token, and the token never reaches the logs.

- ``guarded``: ``--origins http://good.example --token SECRETTOKEN123`` at the
  default log level;
- ``chatty``: ``--token SECRETTOKEN123 --log-level DEBUG``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RunningServer, http_get, start_server
from rhelpers import SHORT, no_sessions_open
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin
from wsclient import (
    check_utterance,
    collect,
    read_for,
    scrape_metrics,
    send_json,
    speak,
    wait_closed,
    wait_for_metric,
)

pytestmark = pytest.mark.timeout(120)

GOOD_ORIGIN = Origin("http://good.example")
TOKEN = "SECRETTOKEN123"
WRONG = "WRONGTOKEN456"
ANONYMOUS = 32  # the default --max-sessions
LOCKOUT_WINDOW_S = 6.0
FOREIGN_ORIGINS = [
    "http://evil.example",
    "https://good.example",  # another scheme is another origin
    "http://good.example:8080",  # another port too
    "http://good.example.evil.example",
    "http://evil.example/http://good.example",
    "null",  # sandboxed iframes and file:// pages
]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("guarded")
    s = start_server(folder, "--origins", GOOD_ORIGIN, "--token", TOKEN)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def chatty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    s = start_server(tmp_path_factory.mktemp("chatty"), "--token", TOKEN, "--log-level", "DEBUG")
    yield s
    s.stop()


async def frames_sent(srv: RunningServer) -> float:
    return (await asyncio.to_thread(scrape_metrics, srv.http)).get("firstword_frames_sent_total", 0)


# ------------------------------------------------------------------- origins
@pytest.mark.parametrize("origin", FOREIGN_ORIGINS)
async def test_a_page_from_another_origin_gets_403_at_the_handshake(
    guarded: RunningServer, origin: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{guarded.ws}?token={TOKEN}", origin=Origin(origin), open_timeout=10):
            pass
    assert refused.value.response.status_code == 403


async def test_the_allowed_origin_and_no_origin_are_served(guarded: RunningServer) -> None:
    """Browsers always send Origin; CLIs and bots send none and are not refused."""
    url = f"{guarded.ws}?token={TOKEN}"
    check_utterance(await speak(url, SHORT, origin=GOOD_ORIGIN))
    check_utterance(await speak(url, SHORT))


# -------------------------------------------------------------------- tokens
UNAUTHORIZED_OPENINGS: dict[str, list[Any]] = {
    "text without start": [{"type": "text", "text": SHORT}, {"type": "end"}],
    "start without token": [{"type": "start"}, {"type": "text", "text": SHORT}],
    "start with wrong token": [{"type": "start", "token": WRONG}],
    "start with empty token": [{"type": "start", "token": ""}],
    "token in the wrong field": [{"type": "start", "voice": TOKEN}],
    "token as a prefix": [{"type": "start", "token": TOKEN[:-1]}],
    "token with a suffix": [{"type": "start", "token": TOKEN + "0"}],
    "token in other case": [{"type": "start", "token": TOKEN.lower()}],
    "text before the right start": [
        {"type": "text", "text": SHORT},
        {"type": "start", "token": TOKEN},
    ],
    "cancel, flush, end": [{"type": "cancel"}, {"type": "flush"}, {"type": "end"}],
}


@pytest.mark.parametrize("messages", UNAUTHORIZED_OPENINGS.values(), ids=UNAUTHORIZED_OPENINGS)
async def test_without_the_token_no_audio_and_1008(
    guarded: RunningServer, messages: list[dict[str, Any]]
) -> None:
    async with connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=10) as conn:
        for message in messages:
            await send_json(conn, message)
        got = await wait_closed(conn, within=15)
    codes = [m.get("code", m["type"]) for m in got.messages]
    assert got.frames == [] and "segment" not in codes, got.summary()
    assert codes[-1] == "unauthorized", codes
    assert set(codes) <= {"unauthorized", "unknown_voice"}, codes
    assert conn.close_code == 1008


@pytest.mark.parametrize("query", [f"token={WRONG}", f"token={TOKEN}x", "token=%00"])
async def test_a_wrong_url_token_gets_401_at_the_handshake(
    guarded: RunningServer, query: str
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{guarded.ws}?{query}", origin=GOOD_ORIGIN, open_timeout=10):
            pass
    assert refused.value.response.status_code == 401
    samples = await asyncio.to_thread(scrape_metrics, guarded.http)
    assert samples.get('firstword_errors_total{code="unauthorized"}', 0) >= 1, samples


async def test_bad_frames_before_the_token_produce_errors_and_no_audio(
    guarded: RunningServer,
) -> None:
    """Bad frames are answered by their error; the first real message closes with 1008.

    A lone surrogate in ``start.token`` used to escape the parser and crash the
    connection handler (close 1011, traceback in the log); it is ``bad_field`` now.
    """
    async with connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=10) as conn:
        cases: list[tuple[str | bytes, str]] = [
            ("{", "bad_json"),
            (b"\x00", "binary_not_allowed"),
            ('{"type": "start", "token": "\\ud800"}', "bad_field"),
            ('{"type": "start", "token": 123}', "bad_field"),
            ('{"type": "start", "speed": 9}', "bad_field"),
        ]
        for frame, code in cases:
            await conn.send(frame)
            error = (await collect(conn, until=("error",), within=10)).one("error")
            assert error["code"] == code, (frame, error)
        await send_json(conn, {"type": "text", "text": SHORT})
        got = await wait_closed(conn, within=15)
    assert [m["code"] for m in got.messages] == ["unauthorized"] and got.frames == []
    assert conn.close_code == 1008


async def test_the_token_in_the_url_or_in_start_works(guarded: RunningServer) -> None:
    check_utterance(await speak(f"{guarded.ws}?token={TOKEN}", SHORT, origin=GOOD_ORIGIN))
    check_utterance(await speak(guarded.ws, SHORT, {"token": TOKEN}, origin=GOOD_ORIGIN))
    # once authenticated by start, later starts need no token
    async with connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=10) as conn:
        await send_json(conn, {"type": "start", "token": TOKEN})
        await collect(conn, until=("ready",), within=10)
        await send_json(conn, {"type": "start", "speed": 1.5})
        assert (await collect(conn, until=("ready",), within=10)).one("ready")["speed"] == 1.5


async def test_refused_attempts_produce_no_audio_and_leave_no_session(
    guarded: RunningServer,
) -> None:
    await no_sessions_open(guarded.http)
    before = await frames_sent(guarded)
    attempts = 0
    for messages in UNAUTHORIZED_OPENINGS.values():
        for _ in range(3):
            async with connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=10) as conn:
                for message in messages:
                    await send_json(conn, message)
                await wait_closed(conn, within=15)
            attempts += 1
    for origin in FOREIGN_ORIGINS:
        with pytest.raises(InvalidStatus):
            async with connect(f"{guarded.ws}?token={TOKEN}", origin=Origin(origin)):
                pass
        attempts += 1
    assert await frames_sent(guarded) == before
    await no_sessions_open(guarded.http)
    assert http_get(guarded.http + "/readyz")[0] == 200
    print(f"\nFIGURES auth: {attempts} refused attempts, 0 audio frames, 0 sessions left")


async def test_anonymous_connections_cannot_lock_out_a_client_with_the_token(
    guarded: RunningServer,
) -> None:
    await no_sessions_open(guarded.http)
    async with contextlib.AsyncExitStack() as anonymous:
        for _ in range(ANONYMOUS):
            await anonymous.enter_async_context(
                connect(guarded.ws, origin=GOOD_ORIGIN, open_timeout=10)
            )
        await wait_for_metric(guarded.http, "firstword_active_sessions", lambda v: v >= ANONYMOUS)
        deadline = time.monotonic() + LOCKOUT_WINDOW_S
        served = False
        while not served and time.monotonic() < deadline:  # bounded: ~12 attempts
            async with connect(f"{guarded.ws}?token={TOKEN}", origin=GOOD_ORIGIN) as conn:
                if not (await read_for(conn, 0.5)).closed:  # not closed with 1013 at once
                    await send_json(conn, {"type": "start"})
                    got = await collect(conn, until=("ready",), within=10)
                    served = bool(got.of_type("ready"))
    assert served, f"1013 for {LOCKOUT_WINDOW_S} s while {ANONYMOUS} sockets without token idled"


# ---------------------------------------------------------------------- logs
async def use_tokens(srv: RunningServer, origin: Origin | None = None) -> None:
    """Every way a token reaches the server: URL, start, right and wrong, then a crash try."""
    await no_sessions_open(srv.http)
    check_utterance(await speak(f"{srv.ws}?token={TOKEN}", SHORT, origin=origin))
    check_utterance(await speak(srv.ws, SHORT, {"token": TOKEN}, origin=origin))
    with pytest.raises(InvalidStatus):
        async with connect(f"{srv.ws}?token={WRONG}", origin=origin, open_timeout=10):
            pass
    async with connect(srv.ws, origin=origin, open_timeout=10) as conn:
        await send_json(conn, {"type": "start", "token": WRONG})
        await wait_closed(conn, within=15)
    async with connect(srv.ws, origin=origin, open_timeout=10) as conn:
        await conn.send(json.dumps({"type": "start", "token": TOKEN + "\udc00"}))
        await send_json(conn, {"type": "text", "text": SHORT})
        await wait_closed(conn, within=15)


def assert_no_token_in(log: str) -> None:
    assert log.strip(), "the server wrote no log at all"
    for secret in (TOKEN, WRONG):
        leaks = [line for line in log.splitlines() if secret in line]
        assert not leaks, f"{secret} in the log:\n" + "\n".join(leaks[:5])


async def test_tokens_never_appear_in_the_log(guarded: RunningServer) -> None:
    await use_tokens(guarded, GOOD_ORIGIN)
    await asyncio.sleep(0.2)  # let the last lines reach the file
    assert_no_token_in(guarded.log())


async def test_tokens_never_appear_in_the_debug_log(chatty: RunningServer) -> None:
    await use_tokens(chatty)
    await asyncio.sleep(0.2)
    assert_no_token_in(chatty.log())
