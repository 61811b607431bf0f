"""Scale-out: three real replicas behind a real nginx (Debian's), all on loopback.

The replicas (``server.py --workers 1 --max-sessions 6 --when-full 503``) are
shared by the module; each test gets its own nginx in front of them (a fresh
access log and fresh least_conn counts) and first restarts, on the same port,
any replica an earlier test stopped or killed. Clients are the project's own
client library (``client.session.TTSClient``), which reconnects between
utterances.

Which replica served a session is read from the replicas' own logs (one
``utterance_done`` line per utterance, with the session id the client got in
``ready``) and ``/metrics``; the nginx access log shows retries. Needs nginx
(``apt-get install nginx``): without it the tests skip, except under
``CI=true``, where they fail. Every wait is bounded; timing bounds are loose
because the machine is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsclient import scrape_metrics, wait_for_metric

from client.events import CONNECTION_LOST, Audio, Done, Error, FinalEvent
from client.session import TTSClient
from scripts.nginx import Nginx, find_nginx
from scripts.processes import Replica, free_port, http_status, rss_mib

pytestmark = pytest.mark.timeout(150)

REPLICAS = 3
MAX_SESSIONS = 6
GRACE_S = 20.0
REPLICA_FLAGS = (
    "--when-full",
    "503",
    "--workers",
    "1",
    "--max-sessions",
    str(MAX_SESSIONS),
    "--grace",
    str(GRACE_S),
)
SHORT = "Thank you for calling. How can I help you today?"  # about 3 s of audio
LONG = (  # about 12 s of audio: at real-time pace it outlasts the action taken mid-way
    "Your order left our warehouse on Tuesday morning, and the carrier expects to deliver "
    "it by Friday afternoon. If you are not at home, the driver will leave a card with a "
    "number to call. You will also get a text message with a tracking link the evening before."
)
DONE = 'firstword_utterances_total{outcome="done"}'
ACTIVE = "firstword_active_sessions"
SERVER_FULL = 'firstword_errors_total{code="server_full"}'
_DONE_LINE = re.compile(r'"event": "utterance_done", "session": "([0-9a-f]+)"')


def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        reason = "nginx is not installed (apt-get install nginx)"
        if IN_CI:
            pytest.fail(f"{reason}; CI=true: fail, never skip")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    nginx_binary()
    workdir = tmp_path_factory.mktemp("replicas")
    started: list[Replica] = []
    try:
        for _ in range(REPLICAS):
            port = free_port()
            started.append(Replica(port, workdir / f"replica-{port}.log", REPLICA_FLAGS))
            started[-1].start()
        for replica in started:  # they preload in parallel
            replica.wait_ready(120)
        yield started
    finally:
        for replica in started:
            replica.terminate()
        for replica in started:
            replica.stop(timeout=GRACE_S + 10)


@pytest.fixture
def running(replicas: list[Replica]) -> list[Replica]:
    """The module's replicas, each running and ready."""
    for replica in replicas:
        if replica.stopping and replica.process is not None:  # an earlier test stopped it
            replica.process.wait(GRACE_S + 15)  # (if it still drains, the drain is bounded)
        if not replica.alive:  # start it again on the same port: a rolling restart
            replica.start()
    for replica in replicas:
        replica.wait_ready(120)
    return replicas


@pytest.fixture
def lb(running: list[Replica], tmp_path: Path) -> Iterator[Nginx]:
    """A fresh nginx in front of every replica."""
    nginx = Nginx(nginx_binary(), tmp_path / "nginx", free_port())
    nginx.start([r.address for r in running])
    try:
        yield nginx
    finally:
        nginx.stop(timeout=10)


def done_sessions(replica: Replica) -> set[str]:
    """Session ids with a finished utterance in ``replica``'s log (all its runs)."""
    return set(_DONE_LINE.findall(replica.log()))


async def metrics_of(replica: Replica) -> dict[str, float]:
    return await asyncio.to_thread(scrape_metrics, replica.http)


def tts_client(url: str, *, reconnect: bool = True) -> TTSClient:
    return TTSClient(
        url,
        reconnect=reconnect,
        max_retries=3,
        retry_base_s=0.1,
        connect_timeout_s=10.0,
        response_timeout_s=30.0,
    )


@dataclass
class Listener:
    """One client speaking one utterance, read to its end by a task; times from loop.time()."""

    client: TTSClient
    text: str
    session_id: str = ""
    final: FinalEvent | None = None
    first_audio: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float = 0.0
    task: asyncio.Task[None] | None = None

    async def run(self, within: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            stream = await self.client.say(self.text)
            self.session_id = stream.ready.session_id
            async for event in stream:
                if isinstance(event, Audio):
                    self.first_audio.set()
        self.final = stream.final
        self.ended_at = loop.time()

    def start(self) -> Listener:
        self.task = asyncio.create_task(self.run())
        return self


@contextlib.asynccontextmanager
async def clients(url: str, count: int) -> AsyncIterator[list[TTSClient]]:
    """``count`` connected clients (opened at once), closed at the end."""
    async with contextlib.AsyncExitStack() as stack:
        made = [tts_client(url) for _ in range(count)]
        for c in made:
            stack.push_async_callback(c.close)
        await asyncio.gather(*(c.connect() for c in made))
        yield made


async def finish(listeners: list[Listener], within: float = 60.0) -> None:
    tasks = [lst.task for lst in listeners if lst.task is not None]
    async with asyncio.timeout(within):
        await asyncio.gather(*tasks)


def kinds(listeners: list[Listener]) -> list[str]:
    return [type(lst.final).__name__ if lst.final else "none" for lst in listeners]


# --------------------------------------------------------------------- tests
async def test_twelve_sessions_through_nginx_complete_spread_over_every_replica(
    lb: Nginx, replicas: list[Replica]
) -> None:
    before = [(await metrics_of(r)).get(DONE, 0.0) for r in replicas]
    async with clients(lb.ws, 12) as made:
        listeners = [Listener(c, SHORT).start() for c in made]
        await finish(listeners)
        rss_loaded = [rss_mib(r.process.pid) for r in replicas if r.process is not None]
    assert kinds(listeners) == ["Done"] * 12, [lst.final for lst in listeners]
    after = [(await metrics_of(r)).get(DONE, 0.0) for r in replicas]
    per_replica = [round(a - b) for a, b in zip(after, before, strict=True)]
    assert sum(per_replica) == 12 and all(n > 0 for n in per_replica), per_replica
    ids = {lst.session_id for lst in listeners}
    homes = [done_sessions(r) & ids for r in replicas]
    assert [len(h) for h in homes] == per_replica  # each session on exactly one replica
    print(f"sessions per replica {per_replica}, RSS MiB after {rss_loaded}")


async def test_a_full_replica_answers_503_and_nginx_places_the_session_elsewhere(
    lb: Nginx, replicas: list[Replica]
) -> None:
    full = replicas[0]
    async with contextlib.AsyncExitStack() as stack:
        # Filled directly, past nginx: nginx counts no session on it, so
        # least_conn offers it the next session first.
        direct: list[ClientConnection] = [
            await stack.enter_async_context(connect(full.ws, open_timeout=10))
            for _ in range(MAX_SESSIONS)
        ]
        await wait_for_metric(full.http, ACTIVE, lambda v: v == MAX_SESSIONS, within=10)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(full.ws, open_timeout=10):
                pass
        assert refused.value.response.status_code == 503
        refusals = (await metrics_of(full)).get(SERVER_FULL, 0.0)

        # One after another, each kept open: by the third at the latest the
        # full replica has the fewest nginx connections and is asked first.
        # No client-side retry (reconnect=False): placing the session is nginx's doing.
        served: list[Listener] = []
        for _ in range(3):
            client = tts_client(lb.ws, reconnect=False)
            stack.push_async_callback(client.close)
            await client.connect()
            served.append(Listener(client, SHORT).start())
            await finish(served[-1:])
        assert kinds(served) == ["Done"] * 3, [lst.final for lst in served]
        assert (await metrics_of(full)).get(SERVER_FULL, 0.0) > refusals, "never asked"
        assert (await metrics_of(full))[ACTIVE] == MAX_SESSIONS
        assert len(direct) == MAX_SESSIONS
    ids = {lst.session_id for lst in served}
    assert not ids & done_sessions(full)
    assert all(any(i in done_sessions(r) for r in replicas[1:]) for i in ids)
    # nginx logs a WebSocket session when it closes: the retry is in the log.
    retried = f"upstream={full.address}, "
    for _ in range(100):
        if retried in lb.access_log():
            break
        await asyncio.sleep(0.05)
    lines = [line for line in lb.access_log().splitlines() if retried in line]
    assert lines and all("ustatus=503, 101" in line for line in lines), lb.access_log()


async def test_with_when_full_1013_the_full_replica_attracts_sessions_nginx_cannot_move(
    running: list[Replica], tmp_path: Path
) -> None:
    """Why the cluster runs ``--when-full 503``: the default accepts, then closes 1013.

    nginx has passed the 101 on by then and cannot retry; and since the
    refused session ends at once, least_conn sees the full replica as the
    least loaded and sends it every next session too.
    """
    port = free_port()
    flags = ("--when-full", "1013", "--workers", "1", "--max-sessions", "1")
    full = Replica(port, tmp_path / f"replica-{port}.log", flags)
    full.start()
    nginx = Nginx(nginx_binary(), tmp_path / "nginx", free_port())
    try:
        await asyncio.to_thread(full.wait_ready, 120)
        nginx.start([full.address, running[1].address])
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(connect(full.ws, open_timeout=10))  # fills it
            await wait_for_metric(full.http, ACTIVE, lambda v: v == 1, within=10)
            closes: list[int | None] = []
            for _ in range(4):  # until one session stays open on the other replica
                conn = await stack.enter_async_context(connect(nginx.ws, open_timeout=10))
                code = await start_or_close(conn)
                if code is None:
                    break
                closes.append(code)
            assert len(closes) < 4, closes
            # The other replica now holds a session, the full one none (as nginx
            # counts): the next handshake goes to the full one, succeeds, and is closed.
            conn = await stack.enter_async_context(connect(nginx.ws, open_timeout=10))
            closes.append(await start_or_close(conn))
        assert closes[-1] == 1013 and set(closes) == {1013}, closes
    finally:
        nginx.stop(timeout=10)
        full.stop(timeout=GRACE_S + 10)


async def start_or_close(conn: ClientConnection) -> int | None:
    """Send ``start``: ``None`` if ``ready`` comes back, else the close code received."""
    try:
        async with asyncio.timeout(10):
            await conn.send('{"type": "start"}')
            await conn.recv()
            return None
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else 1006


async def test_rolling_restart_finishes_started_utterances_and_moves_new_sessions(
    lb: Nginx, replicas: list[Replica]
) -> None:
    async with clients(lb.ws, 6) as first_wave:
        started = [Listener(c, LONG).start() for c in first_wave]
        async with asyncio.timeout(30):
            await asyncio.gather(*(lst.first_audio.wait() for lst in started))
        active = [(await metrics_of(r))[ACTIVE] for r in replicas]
        victim = replicas[active.index(max(active))]
        assert max(active) >= 1, active

        victim.terminate()
        for _ in range(100):  # /readyz turns 503 at once
            if await asyncio.to_thread(http_status, victim.http + "/readyz") == 503:
                break
            await asyncio.sleep(0.05)
        assert victim.alive, "the victim exited before any utterance finished"

        # New sessions while the victim drains: nginx gets 503 from it and retries.
        async with clients(lb.ws, 6) as second_wave:
            still_draining = victim.alive
            moved = [Listener(c, SHORT).start() for c in second_wave]
            await finish(moved)
        await finish(started)

    assert still_draining, "the new sessions came too late to test a drain"
    assert kinds(started) == ["Done"] * 6, [lst.final for lst in started]
    assert kinds(moved) == ["Done"] * 6, [lst.final for lst in moved]
    assert victim.process is not None
    assert await asyncio.to_thread(victim.process.wait, GRACE_S + 15) == 0
    on_victim = done_sessions(victim)
    assert {lst.session_id for lst in started} & on_victim, "no utterance was in flight there"
    assert not {lst.session_id for lst in moved} & on_victim
    others = set().union(*(done_sessions(r) for r in replicas if r is not victim))
    assert {lst.session_id for lst in moved} <= others
    assert "draining:" in victim.log() and "stopped" in victim.log()


async def test_an_idle_session_on_a_draining_replica_speaks_again_elsewhere(
    lb: Nginx, running: list[Replica]
) -> None:
    async with clients(lb.ws, 6) as made:
        warm = [Listener(c, SHORT).start() for c in made]
        await finish(warm)
        assert kinds(warm) == ["Done"] * 6
        homes = [done_sessions(r) for r in running]
        on = [[lst for lst in warm if lst.session_id in home] for home in homes]
        victim_index = max(range(len(running)), key=lambda i: len(on[i]))
        victim, (busy, idle) = running[victim_index], on[victim_index][:2]

        talking = Listener(busy.client, LONG).start()  # keeps the drain going for seconds
        async with asyncio.timeout(30):
            await talking.first_audio.wait()
        victim.terminate()
        for _ in range(100):
            if await asyncio.to_thread(http_status, victim.http + "/readyz") == 503:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the caller on the idle session speaks a moment later
        assert victim.alive, "the drain ended before the idle session spoke"
        again = Listener(idle.client, SHORT).start()
        await finish([again, talking])
    assert isinstance(again.final, Done), f"utterance during the drain: {again.final}"


async def test_a_killed_replica_closes_its_sessions_and_clients_reconnect_elsewhere(
    lb: Nginx, replicas: list[Replica]
) -> None:
    loop = asyncio.get_running_loop()
    async with clients(lb.ws, 6) as made:
        listeners = [Listener(c, LONG).start() for c in made]
        async with asyncio.timeout(30):
            await asyncio.gather(*(lst.first_audio.wait() for lst in listeners))
        active = [(await metrics_of(r))[ACTIVE] for r in replicas]
        victim = replicas[active.index(max(active))]
        on_victim = round(max(active))
        assert on_victim >= 1, active

        killed_at = loop.time()
        victim.kill()  # SIGKILL, then reaped
        for _ in range(200):  # bounded: 10 s
            lost = [lst for lst in listeners if isinstance(lst.final, Error)]
            if len(lost) >= on_victim:
                break
            await asyncio.sleep(0.05)
        assert len(lost) == on_victim, kinds(listeners)
        assert all(
            isinstance(lst.final, Error) and lst.final.code == CONNECTION_LOST for lst in lost
        )
        noticed = [lst.ended_at - killed_at for lst in lost]
        assert max(noticed) < 3.0, f"the close took {noticed} s to reach the clients"

        # At once, the same clients speak again: the client library reconnects
        # through nginx, which finds the dead replica refusing and uses another.
        served_after: list[float] = []
        again: list[Listener] = []
        for lst in lost:
            await lst.client.connect()
            served_after.append(loop.time() - lst.ended_at)
            again.append(Listener(lst.client, SHORT).start())
        await finish(again + listeners)

    assert kinds(listeners).count("Done") == 6 - on_victim, kinds(listeners)
    assert kinds(again) == ["Done"] * len(again), [lst.final for lst in again]
    assert all(lst.client.connects == 2 for lst in lost)
    assert max(served_after) < 1.0, f"served again {served_after} s after the close"
    assert not {lst.session_id for lst in again} & done_sessions(victim)
    assert f"{victim.address}" in lb.error_log() and "refused" in lb.error_log()
    print(f"close seen {noticed} s after SIGKILL; served again {served_after} s after it")


def test_cluster_script_prints_the_url_serves_and_stops_cleanly_on_sigterm() -> None:
    nginx_binary()
    command = [sys.executable, "-m", "scripts.cluster", "--replicas", "2", "--port", "0"]
    process = subprocess.Popen(
        [*command, "--duration", "120", "--", "--workers", "1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
        text = "\n".join(lines)
        url = re.search(r"^  url +(ws://127\.0\.0\.1:\d+/v1/tts)$", text, re.MULTILINE)
        assert url, text
        ports = [int(p) for p in re.findall(r"replica +http://127\.0\.0\.1:(\d+)", text)]
        assert len(ports) == 2, text

        async def one() -> FinalEvent | None:
            async with tts_client(url.group(1)) as c:
                listener = Listener(c, SHORT)
                await listener.run()
                return listener.final

        assert isinstance(asyncio.run(one()), Done)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, text + rest
    assert "stopped" in rest
    for port in ports:  # nothing listens any more
        assert http_status(f"http://127.0.0.1:{port}/healthz") is None
