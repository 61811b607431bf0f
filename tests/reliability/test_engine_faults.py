"""Engine faults: a voice whose ONNX fails at run time is an error for that session only.

The ``faulty`` voice (``rhelpers.build_faulty_voice``) loads, verifies and warms
like any voice, then raises in onnxruntime (an out-of-range Gather index) on
every segment containing ``FAULT_CHAR``. The server must report
``synthesis_failed`` for that segment, go on with the utterance, keep the
connection usable, keep ``/readyz`` at 200, and leave other sessions' audio and
TTFT as they were.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import RunningServer, http_get, start_server
from rhelpers import (
    DET_VOICE,
    FAULT_CHAR,
    FAULTY_VOICE,
    TEXT,
    Timed,
    assert_ttft_undisturbed,
    build_faulty_voice,
    deterministic_voice,
    neighbour_ttfts,
    no_sessions_open,
    timed_speak,
)
from websockets.asyncio.client import ClientConnection, connect
from wsclient import Collected, check_utterance, collect, scrape_metrics, send_json

from protocol import messages as m
from protocol.session import SendFrame, SendJson, Session

pytestmark = pytest.mark.timeout(120)

TINY_RATE = 16000
GOOD = "Fine words here."
BAD = f"Bad {FAULT_CHAR} words here."
FAULTY_TEXT = f"{GOOD} {BAD} More fine words here."
FAULTERS = 2  # sessions failing beside the neighbour
LONG_TAIL = " ".join(f"Sentence number {n} is fine." for n in range(40))  # ~12 s of audio


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    voices = tmp_path_factory.mktemp("voices")
    build_faulty_voice(voices)
    deterministic_voice(voices)
    s = start_server(tmp_path_factory.mktemp("faulty"), "--voices", str(voices))
    yield s
    s.stop()


async def start_voice(conn: ClientConnection, voice: str) -> dict[str, Any]:
    await send_json(conn, {"type": "start", "voice": voice})
    return (await collect(conn, until=("ready",), within=10)).one("ready")


async def utterance(conn: ClientConnection, text: str) -> Collected:
    await send_json(conn, {"type": "text", "text": text})
    await send_json(conn, {"type": "end"})
    return await collect(conn, within=30)


def check_failed_middle(got: Collected) -> None:
    """Segment 0 spoken, segment 1 failed (reported), segment 2 spoken, then done."""
    final = got.final
    assert final is not None and final["type"] == "done", got.summary()
    errors = got.of_type("error")
    assert len(errors) == 1, got.summary()
    error = errors[0]
    assert error["code"] == "synthesis_failed"
    assert (error["segment"], error["unspoken_text"]) == (1, BAD)
    assert "INVALID_ARGUMENT" not in error["message"]  # a stable code, no engine internals
    assert [(s["index"], s["text"]) for s in got.of_type("segment")] == [
        (0, GOOD),
        (2, "More fine words here."),
    ]
    assert final["metrics"]["segments"] == 3
    received_ms = got.audio_bytes / 2 * 1000 / TINY_RATE
    assert abs(final["metrics"]["audio_ms"] - received_ms) <= 0.051


async def test_the_faulty_voice_loads_and_serves_safe_text(faulty: RunningServer) -> None:
    status, body = http_get(faulty.http + "/v1/voices")
    assert status == 200
    names = {v["name"] for v in json.loads(body)["voices"]}
    assert {FAULTY_VOICE, DET_VOICE} <= names
    async with connect(faulty.ws, open_timeout=10) as conn:
        assert (await start_voice(conn, FAULTY_VOICE))["sample_rate"] == TINY_RATE
        check_utterance(await utterance(conn, GOOD), rate=TINY_RATE)


async def test_a_failing_segment_is_reported_and_the_session_goes_on(
    faulty: RunningServer,
) -> None:
    before = (await asyncio.to_thread(scrape_metrics, faulty.http)).get(
        'firstword_errors_total{code="synthesis_failed"}', 0.0
    )
    async with connect(faulty.ws, open_timeout=10) as conn:
        await start_voice(conn, FAULTY_VOICE)
        check_failed_middle(await utterance(conn, FAULTY_TEXT))
        only_bad = await utterance(conn, BAD)  # nothing of it can be spoken
        assert [e["code"] for e in only_bad.of_type("error")] == ["synthesis_failed"]
        assert only_bad.frames == [] and only_bad.of_type("segment") == []
        assert only_bad.one("done")["metrics"]["audio_ms"] == 0.0
        check_utterance(await utterance(conn, "All fine now."), rate=TINY_RATE)
        await start_voice(conn, DET_VOICE)  # and another voice on the same connection
        check_utterance(await utterance(conn, "Yes."))
    after = (await asyncio.to_thread(scrape_metrics, faulty.http))[
        'firstword_errors_total{code="synthesis_failed"}'
    ]
    assert after == before + 2
    assert http_get(faulty.http + "/readyz")[0] == 200


async def test_cancel_after_a_failed_segment_does_not_call_it_spoken(
    faulty: RunningServer,
) -> None:
    """Regression: the pause before segment 2 was labelled with the failed segment 1,
    so a cancel after it reported segment 1 in ``spoken_text`` (protocol/session.py)."""
    async with connect(faulty.ws, open_timeout=10) as conn:
        await start_voice(conn, FAULTY_VOICE)
        await send_json(conn, {"type": "text", "text": f"{FAULTY_TEXT} {LONG_TAIL}"})
        await send_json(conn, {"type": "end"})
        got = Collected()
        while not any(s["index"] == 2 for s in got.of_type("segment")):  # the pause is out
            await collect(conn, until=("segment",), within=30, into=got)
        await send_json(conn, {"type": "cancel"})
        await collect(conn, within=30, into=got)
    cancelled = got.one("cancelled")
    assert FAULT_CHAR not in cancelled["spoken_text"], cancelled
    assert cancelled["spoken_text"].startswith(f"{GOOD} More fine words here."), cancelled
    assert got.one("error")["unspoken_text"] == BAD


def test_session_pause_after_a_failed_segment_belongs_to_the_last_spoken_one() -> None:
    """The same regression without a socket or an engine."""
    s = Session("s", {"v": 22050}, "v")
    s.receive(m.Text("First one. Second fails. Third one. Fourth."), 0.0)
    samples = np.full(4410, 0.25, dtype=np.float32)
    first = s.next_job()
    assert first is not None
    s.deliver_audio(first, samples, 0.01)
    s.finish_job(first)
    failed = s.next_job()
    assert failed is not None
    s.fail_job(failed, "synthesis failed: test")
    third = s.next_job()
    assert third is not None
    s.deliver_audio(third, samples, 0.01)
    labels = []
    while (item := s.pop_outbound()) is not None:
        if isinstance(item, SendFrame):
            labels.append(item.segment)
    assert set(labels) == {0, 2}  # the pause between 0 and 2 is segment 0's
    s.receive(m.Cancel(), 1.0)
    item = s.pop_outbound()
    assert isinstance(item, SendJson)
    assert item.message["spoken_text"] == "First one. Third one."
    assert item.message["unspoken_text"] == "Second fails. Fourth."


# ------------------------------------------------ others are not disturbed
async def keep_failing(url: str, stop: asyncio.Event, max_utterances: int = 30) -> int:
    """Faulty utterances on one connection until ``stop``; return how many failed."""
    count = 0
    async with connect(url, open_timeout=10) as conn:
        await start_voice(conn, FAULTY_VOICE)
        while count < max_utterances and not stop.is_set():
            check_failed_middle(await utterance(conn, FAULTY_TEXT))
            count += 1
            await asyncio.sleep(0.05)  # a caller, not a CPU-bound loop: faults, not load
        check_utterance(await utterance(conn, GOOD), rate=TINY_RATE)
    return count


async def watch_ready(url: str, stop: asyncio.Event, max_polls: int = 600) -> list[int]:
    statuses: list[int] = []
    while len(statuses) < max_polls and not stop.is_set():
        statuses.append((await asyncio.to_thread(http_get, url + "/readyz"))[0])
        await asyncio.sleep(0.05)
    return statuses


async def test_faults_in_other_sessions_leave_a_neighbour_undisturbed(
    faulty: RunningServer,
) -> None:
    start = {"voice": DET_VOICE}
    await no_sessions_open(faulty.http)
    alone: list[Timed] = []
    beside: list[Timed] = []
    failures = 0
    statuses: list[int] = []
    for _ in range(3):
        alone.append(await timed_speak(faulty.ws, TEXT, start))
        stop = asyncio.Event()
        workers = [asyncio.create_task(keep_failing(faulty.ws, stop)) for _ in range(FAULTERS)]
        ready = asyncio.create_task(watch_ready(faulty.http, stop))
        await asyncio.sleep(0.3)  # the faults are happening before the neighbour speaks
        try:
            beside.append(await timed_speak(faulty.ws, TEXT, start))
        finally:
            stop.set()
        counts = await asyncio.gather(*workers)
        failures += sum(counts)
        statuses += await ready
    assert failures >= 3 * FAULTERS
    assert statuses and set(statuses) == {200}
    ttft_alone, ttft_beside = neighbour_ttfts(alone, beside)
    print(
        f"\nFIGURES engine faults: {failures} failed segments in {FAULTERS} concurrent sessions; "
        f"/readyz 200 in {len(statuses)}/{len(statuses)} polls; neighbour audio identical; "
        f"TTFT median alone {ttft_alone:.1f} ms, beside the faults {ttft_beside:.1f} ms"
    )
    assert_ttft_undisturbed(ttft_alone, ttft_beside)
    assert "Traceback" in faulty.log()  # the fault is logged for the operator
