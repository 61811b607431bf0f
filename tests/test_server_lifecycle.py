"""The server process's life: graceful drain on SIGTERM, idle timeout, start-up failures.

Each test starts its own server (the process ends in the test), so this module
keeps them few. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from conftest import ROOT, RunningServer, http_get
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from wsclient import (
    check_utterance,
    collect,
    read_for,
    send_json,
    speak,
    wait_closed,
    wait_for_metric,
)

pytestmark = pytest.mark.timeout(120)

ServerFactory = Callable[..., RunningServer]
TWO_SENTENCES = [
    "The storm rolled in over the hills before noon.",
    "By evening, every road into town was under water.",
]
SESSIONS = 8
GRACE_S = 20.0


async def readyz(srv: RunningServer) -> int | None:
    """Status of /readyz, or None when nothing answers (the port is closed)."""
    try:
        return (await asyncio.to_thread(http_get, srv.http + "/readyz", 1.0))[0]
    except OSError:
        return None


async def exit_code(srv: RunningServer, within: float) -> int:
    return await asyncio.to_thread(srv.process.wait, within)


async def test_sigterm_drains_in_flight_utterances_then_exits_0(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory("--grace", str(GRACE_S))
    text = " ".join(TWO_SENTENCES)
    solo_ms = check_utterance(await speak(srv.ws, text))["audio_ms"]

    async with AsyncExitStack() as stack:
        conns: list[ClientConnection] = [
            await stack.enter_async_context(connect(srv.ws, open_timeout=10))
            for _ in range(SESSIONS)
        ]
        for conn in conns:
            await send_json(conn, {"type": "text", "text": text})
            await send_json(conn, {"type": "end"})
        streams = await asyncio.gather(
            *(collect(conn, until=("audio",), within=30) for conn in conns)
        )

        srv.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        status: int | None = 200
        for _ in range(100):  # /readyz turns 503 at once
            status = await readyz(srv)
            if status != 200:
                break
            await asyncio.sleep(0.01)
        assert status == 503, status
        assert time.monotonic() - signalled < 2.0

        with pytest.raises((InvalidStatus, OSError)) as refused:
            async with connect(srv.ws, open_timeout=5):
                pass
        if isinstance(refused.value, InvalidStatus):
            assert refused.value.response.status_code == 503

        await asyncio.gather(
            *(collect(conn, within=GRACE_S, into=s) for conn, s in zip(conns, streams, strict=True))
        )
        for stream in streams:
            assert stream.times[-1] > signalled, "finished before SIGTERM: nothing was drained"
            metrics = check_utterance(stream)  # done, with every segment's audio
            assert [s["text"] for s in stream.of_type("segment")] == TWO_SENTENCES
            assert metrics["audio_ms"] > 0.85 * solo_ms, (metrics, solo_ms)

        closes = await asyncio.gather(*(wait_closed(conn, within=GRACE_S) for conn in conns))
        assert all(c.events == [] for c in closes)
        assert [conn.close_code for conn in conns] == [1001] * SESSIONS

    assert await exit_code(srv, GRACE_S + 10) == 0
    assert time.monotonic() - signalled < GRACE_S + 10
    log = srv.log()
    assert f"draining: {SESSIONS} session(s)" in log
    assert "stopped" in log


async def test_idle_session_is_closed_and_idle_server_exits_0_on_sigterm(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory("--idle-timeout", "1")
    async with connect(srv.ws, open_timeout=10) as conn:
        opened = time.monotonic()
        got = await wait_closed(conn, within=10)
        waited = time.monotonic() - opened
    assert got.events == []
    assert (conn.close_code, conn.close_reason) == (1000, "idle timeout")
    assert 0.9 <= waited < 5, waited
    await wait_for_metric(srv.http, "firstword_active_sessions", lambda v: v == 0)

    srv.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert await exit_code(srv, 10) == 0
    assert time.monotonic() - signalled < 5
    assert "stopped" in srv.log()


async def test_sigterm_while_loading_exits_0(server_factory: ServerFactory) -> None:
    srv = server_factory(wait=False)
    for _ in range(600):  # the port answers (health) before the voices are loaded
        try:
            health = await asyncio.to_thread(http_get, srv.http + "/healthz", 0.5)
            ready = await asyncio.to_thread(http_get, srv.http + "/readyz", 0.5)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        assert health[0] == 200
        assert ready[0] == 503, "ready before SIGTERM could be sent while loading"
        break
    srv.process.send_signal(signal.SIGTERM)
    assert await exit_code(srv, 30) == 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
async def test_open_utterance_past_idle_timeout_keeps_serving(
    server_factory: ServerFactory,
) -> None:
    srv = server_factory("--idle-timeout", "1")
    try:
        async with connect(srv.ws, open_timeout=10) as conn:
            await send_json(conn, {"type": "text", "text": "Hi there."})  # no end: stays open
            await collect(conn, until=("audio",), within=10)
            await read_for(conn, 1.5)  # the rest of its audio; now past the idle timeout
            before, started = cpu_seconds(srv.process.pid), time.monotonic()
            await asyncio.sleep(1.0)
            cpu_share = (cpu_seconds(srv.process.pid) - before) / (time.monotonic() - started)
            await send_json(conn, {"type": "cancel"})
            answer = await read_for(conn, 3.0)
        problems = []
        if cpu_share > 0.5:
            problems.append(f"server busy at {cpu_share:.0%} CPU while idle")
        if "cancelled" not in answer.types:
            problems.append(f"cancel not answered: {answer.summary()!r}")
        try:
            await wait_for_metric(srv.http, "firstword_active_sessions", lambda v: v == 0, 2.0)
        except TimeoutError:
            problems.append("the session is still open after the client left")
        assert not problems, problems
    finally:
        if srv.process.poll() is None:  # with the bug, SIGTERM would wait for ever
            srv.process.kill()
            srv.process.wait(10)


def test_help_exits_0_and_names_the_environment_variables() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "FIRSTWORD_" in done.stdout
    for flag in ("--grace", "--max-sessions", "--token", "--origins", "--idle-timeout"):
        assert flag in done.stdout


@pytest.mark.parametrize(
    ("name", "contents", "says"),
    [
        ("missing.onnx", None, "voice model file not found"),
        ("broken.onnx", b"not a model", "has no 'audio' section"),
    ],
)
def test_bad_voice_makes_the_server_exit_non_zero_with_a_clear_message(
    server_factory: ServerFactory,
    tmp_path: Path,
    name: str,
    contents: bytes | None,
    says: str,
) -> None:
    voice = tmp_path / name
    if contents is not None:
        voice.write_bytes(contents)
        voice.with_name(name + ".json").write_text("{}")
    srv = server_factory("--voice", str(voice), wait=False)
    assert srv.process.wait(60) != 0
    log = srv.log()
    assert "preload failed" in log
    assert str(voice) in log and says in log, log[-2000:]


def test_a_port_in_use_is_one_clear_line_and_exit_1(
    server_factory: ServerFactory, server: RunningServer
) -> None:
    taken = server_factory("--port", str(server.port), wait=False)
    assert taken.process.wait(60) == 1
    log = taken.log()
    assert f"cannot listen on 127.0.0.1:{server.port}" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]


def test_health_probes_and_scrapes_leave_no_log_lines(server: RunningServer) -> None:
    before = server.log().count("\n")
    for path in ("/readyz", "/healthz", "/metrics", "/"):
        assert http_get(server.http + path)[0] == 200
    time.sleep(0.3)
    added = server.log().splitlines()[before:]
    assert not [line for line in added if "websockets.server" in line], added
