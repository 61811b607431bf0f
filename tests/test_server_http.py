"""Plain HTTP on the server's port: health, readiness, metrics, voices, the page.

One server serves the module. It is started without waiting, and the
``booted`` fixture watches /healthz, /readyz and /v1/voices from the first
moment the port answers until it is ready, so the loading phase can be checked.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import RunningServer, start_server
from websockets.asyncio.client import connect
from wsclient import collect, scrape_metrics, send_json, speak, wait_for_metric

from service.metrics import TTFT_BUCKETS

pytestmark = pytest.mark.timeout(120)
POLL_S = 0.02


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def get(port: int, path: str, timeout: float = 5.0) -> Answer:
    """GET ``path`` exactly as given (no normalisation of ``..`` or escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return Answer(response.status, response.getheader("Content-Type", ""), response.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class Poll:
    """One look at the server while it started: status per path (None: no answer yet)."""

    healthz: int | None
    readyz: Answer | None
    voices: int | None


@dataclass
class Booted:
    server: RunningServer
    polls: list[Poll]


def _status(port: int, path: str) -> Answer | None:
    try:
        return get(port, path, timeout=1.0)
    except OSError:
        return None


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    server = start_server(tmp_path_factory.mktemp("http"), wait=False)
    polls: list[Poll] = []
    try:
        for _ in range(round(60 / POLL_S)):
            if server.process.poll() is not None:
                break
            # /readyz last in each round: when it says "loading", so did the server
            # when the other two answered
            health, voices = _status(server.port, "/healthz"), _status(server.port, "/v1/voices")
            ready = _status(server.port, "/readyz")
            polls.append(
                Poll(health.status if health else None, ready, voices.status if voices else None)
            )
            if ready is not None and ready.status == 200:
                break
            time.sleep(POLL_S)
        server.wait_ready(timeout=1)  # raises with the log if it never got there
        yield Booted(server, polls)
    finally:
        server.stop()


@pytest.fixture
def srv(booted: Booted) -> RunningServer:
    return booted.server


def test_readyz_is_503_while_loading_then_200(booted: Booted) -> None:
    answered = [p for p in booted.polls if p.readyz is not None]
    loading = [p for p in answered if p.readyz is not None and p.readyz.status == 503]
    assert loading, f"never saw /readyz 503 while loading: {booted.polls}"
    for poll in loading:
        assert poll.readyz is not None and poll.readyz.body == b"loading\n"
        # None: the port was not open yet when that earlier GET of the round went out
        assert poll.healthz in (200, None) and poll.voices in (503, None), poll
    assert any(p.healthz == 200 and p.voices == 503 for p in loading), loading
    last = answered[-1].readyz
    assert last is not None and last.status == 200 and last.body == b"ready\n"
    statuses = [p.readyz.status for p in answered if p.readyz is not None]
    assert statuses == sorted(statuses, reverse=True), statuses  # 503 ... 503, 200


def test_healthz_is_200(srv: RunningServer) -> None:
    answer = get(srv.port, "/healthz")
    assert (answer.status, answer.body) == (200, b"ok\n")


def test_voices_lists_the_default_voice(srv: RunningServer) -> None:
    answer = get(srv.port, "/v1/voices")
    assert answer.status == 200
    assert answer.content_type.startswith("application/json")
    data = json.loads(answer.body)
    assert data["default"] == "en_US-joe-medium"
    by_name = {v["name"]: v for v in data["voices"]}
    assert by_name["en_US-joe-medium"] == {
        "name": "en_US-joe-medium",
        "language": "en_US",
        "sample_rate": 22050,
        "backend": "piper",
        "streaming": True,
    }


@pytest.mark.parametrize("path", ["/", "/index.html", "/?from=test"])
def test_root_serves_the_page(srv: RunningServer, path: str) -> None:
    answer = get(srv.port, path)
    assert answer.status == 200
    assert answer.content_type.startswith("text/html")
    assert b"<html" in answer.body.lower()


@pytest.mark.parametrize(
    "path",
    [
        "/../server.py",
        "/%2e%2e/server.py",
        "/..%2fserver.py",
        "/%2e%2e%2fserver.py",
        "/../../../../../etc/passwd",
        "//etc/passwd",
        "/web/../server.py",
        "/./../service/config.py",
    ],
)
def test_path_traversal_is_404(srv: RunningServer, path: str) -> None:
    answer = get(srv.port, path)
    assert answer.status == 404
    assert b"import" not in answer.body and b"root:" not in answer.body


@pytest.mark.parametrize("path", ["/nope", "/v2/tts", "/metrics/extra", "/healthz/", "/web"])
def test_unknown_path_is_404(srv: RunningServer, path: str) -> None:
    assert get(srv.port, path).status == 404


def test_tts_path_without_upgrade_is_426(srv: RunningServer) -> None:
    assert get(srv.port, "/v1/tts").status == 426


def _sample(metrics: dict[str, float], name: str) -> float:
    return metrics.get(name, 0.0)


async def _scrape(srv: RunningServer) -> dict[str, float]:
    return await asyncio.to_thread(scrape_metrics, srv.http)


async def test_metrics_count_utterances_frames_sessions_and_errors(srv: RunningServer) -> None:
    answer = await asyncio.to_thread(get, srv.port, "/metrics")
    assert answer.status == 200 and answer.content_type.startswith("text/plain; version=0.0.4")
    before = await _scrape(srv)
    assert before["firstword_ready"] == 1.0
    assert before["firstword_active_sessions"] == 0.0

    got = await speak(srv.ws, "Hello there, my friend.")
    assert got.final is not None and got.final["type"] == "done"
    frames = len(got.frames)
    count = "firstword_ttft_seconds_count"
    await wait_for_metric(srv.http, count, lambda v: v >= _sample(before, count) + 1)

    async with connect(srv.ws) as conn:
        await conn.send("{not json")
        error = (await collect(conn, until=("error",), within=5)).one("error")
        assert error["code"] == "bad_json"
        await send_json(conn, {"type": "start"})
        await collect(conn, until=("ready",), within=5)
        bad_json = 'firstword_errors_total{code="bad_json"}'
        await wait_for_metric(srv.http, bad_json, lambda v: v == _sample(before, bad_json) + 1)
        during = await _scrape(srv)
        assert during["firstword_active_sessions"] == 1.0
    await wait_for_metric(srv.http, "firstword_active_sessions", lambda v: v == 0.0)

    after = await _scrape(srv)

    def delta(name: str) -> float:  # exact: nothing else talks to this server meanwhile
        return _sample(after, name) - _sample(before, name)

    assert delta("firstword_frames_sent_total") == frames > 0
    assert delta(count) == 1
    assert delta('firstword_utterances_total{outcome="done"}') == 1
    assert delta("firstword_audio_sent_seconds_total") == pytest.approx(
        got.final["metrics"]["audio_ms"] / 1000
    )
    buckets = [after[f'firstword_ttft_seconds_bucket{{le="{le}"}}'] for le in TTFT_BUCKETS]
    buckets.append(after['firstword_ttft_seconds_bucket{le="+Inf"}'])
    assert buckets == sorted(buckets)  # cumulative
    assert buckets[-1] == after[count] >= 1
    assert after["firstword_ttft_seconds_sum"] > 0
    assert after["firstword_engine_queue"] == 0.0
