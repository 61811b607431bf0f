"""Bad input over a real socket: each bad message gets its stable error code, the
connection stays usable where the protocol says so, and a neighbour session on
the same server streams byte-identical audio with an unchanged TTFT while one
connection fires the whole corpus and others send invalid UTF-8.

One server serves the module: the default voice with its sampling noise off
(``DET_VOICE``), small text limits and an idle flush far away (only ``flush``
or ``end`` releases a fragment). The garbage comes at ``PESTER_RATE`` messages
per second, just under the default ``--rate-limit`` (200/s): every bad frame is
parsed and answered, none is shed by the rate limiter (``test_floods`` covers
clients over the limit).
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RunningServer, start_server
from rhelpers import (
    BAD_FRAMES,
    DET_VOICE,
    SHORT,
    TEXT,
    Bad,
    Timed,
    assert_ttft_undisturbed,
    deterministic_voice,
    expect_error,
    median,
    no_sessions_open,
    still_speaks,
    still_usable,
    timed_speak,
)
from websockets.asyncio.client import ClientConnection, connect
from wsclient import Collected, check_utterance, collect, send_json, wait_closed

from protocol.messages import ERROR_CODES

pytestmark = pytest.mark.timeout(120)

MAX_TEXT_CHARS = 200
MAX_UTTERANCE_CHARS = 300
FRAGMENT = "Well here is a fragment"
LONG = " ".join(f"This is sentence number {n} of a long answer." for n in range(1, 11))
REST = ". " + LONG[: MAX_TEXT_CHARS - 10]  # seconds of speech: still going when probed
RUNS = 5  # reference and disturbed utterances each
PESTER_RATE = 150  # bad frames per second


@pytest.fixture(scope="module")
def det(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    voices = tmp_path_factory.mktemp("voices")
    deterministic_voice(voices)
    flags = {
        "--voices": voices,
        "--max-text-chars": MAX_TEXT_CHARS,
        "--max-utterance-chars": MAX_UTTERANCE_CHARS,
        "--flush-ms": 10_000,
    }
    s = start_server(tmp_path_factory.mktemp("det"), *(str(x) for f in flags.items() for x in f))
    yield s
    s.stop()


def segment_texts(got: Collected) -> list[str]:
    return [str(s["text"]) for s in got.of_type("segment")]


# -------------------------------------------------------------- the corpus
def test_corpus_covers_every_client_error_code() -> None:
    assert len(BAD_FRAMES) >= 40
    assert len({b.name for b in BAD_FRAMES}) == len(BAD_FRAMES)
    assert {b.code for b in BAD_FRAMES} <= set(ERROR_CODES)
    # the codes a client can cause without state, limits or a token
    assert {b.code for b in BAD_FRAMES} == {
        "bad_json",
        "bad_message",
        "unknown_type",
        "bad_field",
        "unknown_voice",
        "binary_not_allowed",
        "no_utterance",
    }


@pytest.mark.parametrize("bad", BAD_FRAMES, ids=[b.name for b in BAD_FRAMES])
async def test_bad_frame_gets_its_code_and_the_connection_stays_usable(
    det: RunningServer, bad: Bad
) -> None:
    async with connect(det.ws, open_timeout=10) as conn:
        error = await expect_error(conn, bad.frame, bad.code)
        assert set(error) == {"type", "code", "message"}
        assert len(error["message"]) <= 300  # client input is not echoed back whole
        await still_usable(conn)


async def test_whole_corpus_on_one_connection_then_it_still_speaks(det: RunningServer) -> None:
    async with connect(det.ws, open_timeout=10) as conn:
        for bad in BAD_FRAMES:
            await expect_error(conn, bad.frame, bad.code)
        metrics = await still_speaks(conn)
        assert metrics["segments"] == 1


# ------------------------------------------------------------------ limits
async def test_text_over_the_message_limit_is_refused_and_the_utterance_goes_on(
    det: RunningServer,
) -> None:
    async with connect(det.ws, open_timeout=10) as conn:
        await send_json(conn, {"type": "text", "text": "First words."})
        got = await collect(conn, until=("ready",), within=10)
        over = json.dumps({"type": "text", "text": "y" * (MAX_TEXT_CHARS + 1)})
        error = await expect_error(conn, over, "text_too_long", into=got)
        assert str(MAX_TEXT_CHARS) in error["message"]
        await send_json(conn, {"type": "text", "text": " Last words."})
        await send_json(conn, {"type": "end"})
        await collect(conn, within=30, into=got)
    check_utterance(got)
    assert segment_texts(got) == ["First words.", "Last words."]


async def test_text_over_the_utterance_limit_is_refused_whole(det: RunningServer) -> None:
    first = "A sentence to start with. " + "word " * 30  # 176 characters, fragment pending
    second = "more " * 30  # 150: over the utterance's 300 together with the first
    assert len(first) <= MAX_TEXT_CHARS and len(first) + len(second) > MAX_UTTERANCE_CHARS
    async with connect(det.ws, open_timeout=10) as conn:
        await send_json(conn, {"type": "text", "text": first})
        got = await collect(conn, until=("ready",), within=10)
        over = json.dumps({"type": "text", "text": second})
        error = await expect_error(conn, over, "text_too_long", into=got)
        assert str(MAX_UTTERANCE_CHARS) in error["message"]
        await send_json(conn, {"type": "cancel"})
        await collect(conn, within=30, into=got)
    cancelled = got.one("cancelled")
    said = (cancelled["spoken_text"] + " " + cancelled["unspoken_text"]).split()
    assert said == first.split()  # everything accepted is accounted for, nothing of the refused
    # a new utterance starts from zero characters
    async with connect(det.ws, open_timeout=10) as conn:
        await still_speaks(conn)


async def test_whitespace_only_text_is_accepted_and_speaks_nothing(det: RunningServer) -> None:
    async with connect(det.ws, open_timeout=10) as conn:
        for piece in (" ", "\n\n", "\t \r\n", "\u3000\u00a0"):
            await send_json(conn, {"type": "text", "text": piece})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, within=10)
        assert got.types == ["ready", "done"], got.summary()
        metrics = got.one("done")["metrics"]
        assert (metrics["segments"], metrics["audio_ms"], metrics["ttft_ms"]) == (0, 0.0, None)
        await still_speaks(conn)


async def test_control_characters_are_spoken_as_spaces(det: RunningServer) -> None:
    text = "Hello\x00 there\x07, my\x1b[0m friend\x7f\x85\x9f. Bye\x0b\x0c now."
    async with connect(det.ws, open_timeout=10) as conn:
        await send_json(conn, {"type": "text", "text": text})
        await send_json(conn, {"type": "end"})
        got = await collect(conn, within=30)
    check_utterance(got)
    spoken = " ".join(segment_texts(got))
    assert not any(unicodedata.category(c) == "Cc" for c in spoken), spoken
    assert (
        spoken.split() == text.translate({c: " " for c in range(160) if c < 32 or c >= 127}).split()
    )


# ------------------------------------------------------------ invalid UTF-8
INVALID_UTF8 = {
    "lone continuation byte": b'{"type": "text", "text": "\x80"}',
    "0xff": b"\xff",
    "truncated sequence": b'{"type": "text", "text": "caf\xc3"}',
    "overlong slash": b'{"type": "text", "text": "\xc0\xaf"}',
    "UTF-8 encoded surrogate": b'{"type": "text", "text": "\xed\xa0\x80"}',
    "above U+10FFFF": b'{"type": "text", "text": "\xf4\x90\x80\x80"}',
}


@pytest.mark.parametrize("frame", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(
    det: RunningServer, frame: bytes
) -> None:
    """RFC 6455: a text frame must be UTF-8; websockets closes with 1007 before we see it."""
    async with connect(det.ws, open_timeout=10) as conn:
        await conn.send(frame, text=True)
        got = await wait_closed(conn)
        assert got.events == []
        assert conn.close_code == 1007
    async with connect(det.ws, open_timeout=10) as conn:
        await still_usable(conn)


# ---------------------------------------------------- flush/end/cancel in every state
STATES = ("idle", "open", "ended", "after_done", "after_cancel")
NOTHING_IN_PROGRESS = ("idle", "after_done", "after_cancel")


async def enter(conn: ClientConnection, state: str) -> Collected:
    """Bring a fresh connection into ``state``; return what arrived on the way."""
    got = Collected()
    if state == "open":  # a fragment buffered, nothing released (idle flush is 10 s away)
        await send_json(conn, {"type": "text", "text": FRAGMENT})
        await collect(conn, until=("ready",), within=10, into=got)
    elif state == "ended":  # end sent, audio flowing, many seconds still to come
        await send_json(conn, {"type": "text", "text": LONG[:MAX_TEXT_CHARS]})
        await send_json(conn, {"type": "end"})
        await collect(conn, until=("audio",), within=30, into=got)
    elif state == "after_done":
        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        await collect(conn, within=30, into=got)
        check_utterance(got)
    elif state == "after_cancel":
        await send_json(conn, {"type": "text", "text": FRAGMENT})
        await send_json(conn, {"type": "cancel"})
        await collect(conn, within=10, into=got)
        assert got.final is not None and got.final["type"] == "cancelled", got.summary()
    return got


async def test_flush_end_cancel_in_every_state(det: RunningServer) -> None:
    """One connection per (state, message); every answer is the protocol's, none escapes."""
    seen: dict[tuple[str, str], str] = {}
    for state in STATES:
        for kind in ("flush", "end", "cancel"):
            async with connect(det.ws, open_timeout=10) as conn:
                got = await enter(conn, state)
                mark = len(got.events)
                await send_json(conn, {"type": kind})
                if state == "open" and kind == "flush":  # the fragment is spoken; finish it
                    await send_json(conn, {"type": "end"})
                if state == "ended" and kind != "cancel":  # an error; the utterance goes on
                    await collect(conn, until=("error",), within=30, into=got)
                    await send_json(conn, {"type": "cancel"})
                if state in NOTHING_IN_PROGRESS:
                    await collect(conn, until=("error", "cancelled"), within=30, into=got)
                else:
                    await collect(conn, within=30, into=got)  # up to done or cancelled
                after = got.events[mark:]
                answer = next(e for e in after if isinstance(e, dict) and e["type"] != "segment")
                seen[state, kind] = str(answer.get("code", answer["type"]))
                if answer["type"] == "cancelled" and state in NOTHING_IN_PROGRESS:
                    assert answer == {
                        "type": "cancelled",
                        "audio_sent_ms": 0.0,
                        "spoken_text": "",
                        "unspoken_text": "",
                    }
                if state == "open" and kind == "cancel":
                    assert answer["unspoken_text"] == FRAGMENT and answer["audio_sent_ms"] == 0
                if state == "open" and kind != "cancel":
                    check_utterance(got)
                    assert segment_texts(got) == [FRAGMENT]
                if state == "ended" and kind == "cancel":
                    assert answer["spoken_text"] and answer["audio_sent_ms"] > 0
                await still_usable(conn)  # also: no frame followed cancelled
    assert seen == {
        ("idle", "flush"): "no_utterance",
        ("idle", "end"): "no_utterance",
        ("idle", "cancel"): "cancelled",
        ("open", "flush"): "done",
        ("open", "end"): "done",
        ("open", "cancel"): "cancelled",
        ("ended", "flush"): "no_utterance",
        ("ended", "end"): "no_utterance",
        ("ended", "cancel"): "cancelled",
        ("after_done", "flush"): "no_utterance",
        ("after_done", "end"): "no_utterance",
        ("after_done", "cancel"): "cancelled",
        ("after_cancel", "flush"): "no_utterance",
        ("after_cancel", "end"): "no_utterance",
        ("after_cancel", "cancel"): "cancelled",
    }


async def test_start_and_text_out_of_turn_get_bad_state(det: RunningServer) -> None:
    async with connect(det.ws, open_timeout=10) as conn:
        got = await enter(conn, "open")
        await expect_error(conn, json.dumps({"type": "start", "speed": 2.0}), "bad_state", got)
        await send_json(conn, {"type": "text", "text": REST})
        await send_json(conn, {"type": "end"})
        await collect(conn, until=("audio",), within=30, into=got)
        start = json.dumps({"type": "start", "voice": DET_VOICE})
        await expect_error(conn, start, "bad_state", into=got)  # start mid-utterance, ended
        late = json.dumps({"type": "text", "text": "Too late."})
        await expect_error(conn, late, "bad_state", into=got)  # text after end
        await send_json(conn, {"type": "cancel"})  # seconds of speech left: no need to wait
        await collect(conn, within=30, into=got)
        cancelled = got.one("cancelled")
        said = cancelled["spoken_text"] + " " + cancelled["unspoken_text"]
        assert said.split() == (FRAGMENT + REST).split()  # "Too late." was not accepted
        assert got.of_type("error") == []  # (the expected errors were taken out above)
        ready = await start_ready(conn, {"type": "start", "speed": 1.5})
        assert ready["speed"] == 1.5  # between utterances start works again


async def start_ready(conn: ClientConnection, message: dict[str, Any]) -> dict[str, Any]:
    await send_json(conn, message)
    return (await collect(conn, until=("ready",), within=10)).one("ready")


# ------------------------------------------------- a neighbour is undisturbed
async def pester(url: str, stop: asyncio.Event, max_rounds: int = 40) -> tuple[int, int]:
    """Fire the whole corpus (and start mid-utterance) at ``PESTER_RATE`` until ``stop``.

    Returns (frames, rounds). Each frame's answer is awaited and checked.
    """
    frames = rounds = 0
    began = time.monotonic()

    async def pace() -> None:
        nonlocal frames
        await asyncio.sleep(max(0.0, began + frames / PESTER_RATE - time.monotonic()))
        frames += 1

    async with connect(url, open_timeout=10) as conn:
        while rounds < max_rounds and not stop.is_set():
            for bad in BAD_FRAMES:
                await pace()
                await expect_error(conn, bad.frame, bad.code)
            await pace()
            await send_json(conn, {"type": "text", "text": FRAGMENT})
            if rounds == 0:
                await collect(conn, until=("ready",), within=10)
            await pace()
            await expect_error(conn, json.dumps({"type": "start"}), "bad_state")
            await pace()
            await send_json(conn, {"type": "cancel"})
            assert (await collect(conn, within=10)).types == ["cancelled"]
            rounds += 1
    return frames, rounds


async def break_utf8(url: str, stop: asyncio.Event, max_connections: int = 40) -> int:
    """Connect and send invalid UTF-8 (closed with 1007) until ``stop``; return the count."""
    count = 0
    while count < max_connections and not stop.is_set():
        await asyncio.sleep(0.05)
        async with connect(url, open_timeout=10) as conn:
            await conn.send(b'{"type": "text", "text": "\xff\xfe"}', text=True)
            await wait_closed(conn)
            assert conn.close_code == 1007
        count += 1
    return count


async def test_a_neighbour_streams_undisturbed_while_another_sends_garbage(
    det: RunningServer,
) -> None:
    start = {"voice": DET_VOICE}
    await no_sessions_open(det.http)
    alone: list[Timed] = []
    disturbed: list[Timed] = []
    sent = rounds = closed = 0
    for _ in range(RUNS):  # alternate, so that drifting background load hits both alike
        alone.append(await timed_speak(det.ws, TEXT, start))
        await no_sessions_open(det.http)
        stop = asyncio.Event()
        pest = asyncio.create_task(pester(det.ws, stop))
        utf8 = asyncio.create_task(break_utf8(det.ws, stop))
        await asyncio.sleep(0.3)  # the garbage is flowing before the neighbour speaks
        try:
            disturbed.append(await timed_speak(det.ws, TEXT, start))
        finally:
            stop.set()
        (frames, n), count = await asyncio.gather(pest, utf8)
        sent, rounds, closed = sent + frames, rounds + n, closed + count
    assert sent >= RUNS * 100 and closed >= RUNS  # the disturbance did overlap

    reference = alone[0]
    for run in [*alone, *disturbed]:
        assert segment_texts(run.got) == segment_texts(reference.got)
        assert run.audio == reference.audio  # byte-identical, frame for frame
    ttft_alone = median([t.server_ttft_ms for t in alone])
    ttft_disturbed = median([t.server_ttft_ms for t in disturbed])
    client_alone = median([t.client_ttfa_ms for t in alone])
    client_disturbed = median([t.client_ttfa_ms for t in disturbed])
    print(
        f"\nFIGURES bad-input neighbour: corpus {len(BAD_FRAMES)} frames; "
        f"{sent} bad frames ({rounds} rounds) at {PESTER_RATE}/s + {closed} invalid-UTF-8 "
        f"connections during {RUNS} utterances; audio {len(reference.audio)} bytes identical; "
        f"server TTFT median alone {ttft_alone:.1f} ms, disturbed {ttft_disturbed:.1f} ms; "
        f"client time to first audio alone {client_alone:.1f} ms, "
        f"disturbed {client_disturbed:.1f} ms"
    )
    assert_ttft_undisturbed(ttft_alone, ttft_disturbed)
    assert_ttft_undisturbed(client_alone, client_disturbed)
