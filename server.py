"""firstword server: protocol v1 over WebSocket, a thin adapter around ``protocol.session``.

    python server.py [--host 127.0.0.1] [--port 8765] [--voices DIR] ...   (--help for all)

The port answers plain HTTP too: /healthz, /readyz, /metrics, /v1/voices and
the page under /. The engine is preloaded in a worker thread while /healthz
already answers; /readyz turns 200 and WebSocket handshakes are accepted only
once every voice is loaded and warmed. SIGTERM drains: /readyz 503, no new
sessions or utterances, in-flight utterances get ``--grace`` seconds, then
every connection closes with 1001 and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Origin

from engine import Engine
from protocol import messages as m
from protocol.auth import token_matches
from protocol.session import (
    Limits,
    Outbound,
    SegmentJob,
    SendDone,
    SendFrame,
    Session,
    utterance_metrics,
)
from service import http, http_log, redact
from service.config import Config, parse_config
from service.metrics import Metrics
from service.ratelimit import TokenBucket
from service.scheduler import EdfScheduler

log = logging.getLogger("firstword")
TTS_PATH = "/v1/tts"
AUTH_TIMEOUT_S = 10.0  # a connection must present its token within this (with --token)


# Closes websockets sends by itself when a client's frame is bad, as error codes on /metrics.
FRAME_CLOSES = {1002: "protocol_error", 1007: "invalid_utf8", 1009: "message_too_big"}


@dataclass
class App:
    """Process-wide state: the engine, the worker pool, metrics, open sessions."""

    config: Config
    engine: Engine | None = None
    draining: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    sessions: set[Session] = field(default_factory=set)
    scheduler: EdfScheduler | None = None
    links: set[_Link] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining

    # ---------------------------------------------------------------- HTTP
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if path == "/healthz":
            return http.text(200, "ok")
        if path == "/readyz":
            return (
                http.text(200, "ready")
                if self.ready
                else http.text(503, "draining" if self.draining else "loading")
            )
        if path == "/metrics":
            self.metrics.active.set(len(self.sessions))
            self.metrics.tasks.set(len(asyncio.all_tasks()))
            if self.scheduler is not None:
                self.metrics.queue.set(self.scheduler.queued)
            return http.response(
                200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"
            )
        if path == "/v1/voices":
            return http.json_response(200 if self.engine else 503, self.voices())
        if path == TTS_PATH:
            if not self.ready:
                return http.text(503, "draining" if self.draining else "loading")
            if self.config.when_full == "503" and len(self.sessions) >= self.config.max_sessions:
                self.metrics.errors.labels("server_full").inc()
                log.info("refused a WebSocket handshake: server full (503)")
                return http.text(503, "server full")  # a load balancer retries another replica
            token = parse_qs(parts.query).get("token", [None])[0]
            expected = self.config.token
            if expected is not None and token is not None and not token_matches(token, expected):
                self.metrics.errors.labels("unauthorized").inc()
                log.info("refused a WebSocket handshake: wrong token (401)")
                return http.text(401, "wrong token")
            return None  # go on with the WebSocket handshake
        return http.static_file(path)

    def voices(self) -> dict[str, Any]:
        if self.engine is None:
            return {"voices": [], "default": None}
        return {
            "default": self.engine.default_voice,
            "voices": [
                {
                    "name": name,
                    "language": v.language,
                    "sample_rate": v.sample_rate,
                    "backend": v.backend,
                    "streaming": v.streaming,
                }
                for name, v in self.engine.voices.items()
            ],
        }

    def count(self, authenticated: bool) -> int:
        """Open sessions that have (or have not yet) authenticated."""
        return sum(1 for s in self.sessions if s.authenticated == authenticated)

    # ----------------------------------------------------------- WebSocket
    async def handler(self, conn: ServerConnection) -> None:
        assert self.engine is not None and self.scheduler is not None
        if conn.request is None or urlsplit(conn.request.path).path != TTS_PATH:
            await conn.close(1008, "WebSocket endpoint is " + TTS_PATH)
            return
        query_token = parse_qs(urlsplit(conn.request.path).query).get("token", [None])[0]
        c = self.config
        authenticated = c.token is None or token_matches(query_token, c.token)
        # Sessions without their token yet have a cap of their own (and AUTH_TIMEOUT_S),
        # so anonymous sockets cannot take the places of clients that hold the token.
        if self.count(authenticated) >= c.max_sessions:
            self.metrics.errors.labels("server_full").inc()
            log.info("closed a new session: server full (1013, --max-sessions %d)", c.max_sessions)
            await conn.close(1013, "server full, try again later")
            return
        session = Session(
            uuid.uuid4().hex[:12],
            {name: v.sample_rate for name, v in self.engine.voices.items()},
            self.engine.default_voice,
            limits=Limits(
                max_text_chars=c.max_text_chars,
                max_utterance_chars=c.max_utterance_chars,
                flush_after_s=c.flush_ms / 1000,
                lookahead_ms=c.lookahead_ms,
            ),
            token=c.token,
            authenticated=authenticated,
        )
        self.sessions.add(session)
        self.metrics.active.set(len(self.sessions))
        link = _Link(self, conn, session)
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)
            self.sessions.discard(session)
            self.metrics.active.set(len(self.sessions))


class _Link:
    """The tasks of one connection: receive loop, sender, synthesis producer."""

    def __init__(self, app: App, conn: ServerConnection, session: Session) -> None:
        self.app, self.conn, self.session = app, conn, session
        self.wake_sender = asyncio.Event()
        self.wake_producer = asyncio.Event()
        self.outbound_empty = asyncio.Event()
        c = app.config
        self.bucket = TokenBucket(rate=c.rate_limit, burst=2 * c.rate_limit)
        self.strikes = 0
        self.leaving = False  # closing with 1001 because the server drains

    def leave_if_idle(self) -> asyncio.Task[None] | None:
        """While draining: close with 1001 once nothing is in flight, so the client's next
        utterance goes to another replica instead of failing with server_draining."""
        s = self.session
        if self.leaving or s.utterance is not None or s.outbound:
            return None
        self.leaving = True
        return asyncio.create_task(self.conn.close(1001, "server shutting down"))

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._produce_loop())]
        try:
            await self._receive_loop()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.session.abandon()

    def _kick(self) -> None:
        self.outbound_empty.clear()
        self.wake_sender.set()
        self.wake_producer.set()

    async def _receive_loop(self) -> None:
        s, c = self.session, self.app.config
        last_activity = opened = time.monotonic()
        while True:
            now = time.monotonic()
            deadline = s.flush_deadline()
            idle_at = last_activity + c.idle_timeout
            if not s.authenticated:
                idle_at = min(idle_at, opened + AUTH_TIMEOUT_S)
            wake_at = min(deadline if deadline is not None else idle_at, idle_at)
            # Never 0: on Python 3.11 wait_for(..., 0) cancels recv() before it runs.
            wait = max(0.005, wake_at - now)
            try:
                frame = await asyncio.wait_for(self.conn.recv(), timeout=wait)
            except TimeoutError:
                now = time.monotonic()
                if now >= idle_at:
                    if not s.authenticated:
                        await self._close_now(1008, "no token in time")
                        return
                    if s.utterance is None:
                        await self.conn.close(1000, "idle timeout")
                        return
                    last_activity = now  # an utterance in progress is not idle
                s.on_flush_deadline(now)
                self._kick()
                continue
            except ConnectionClosed as exc:
                # websockets itself closed on a bad frame: count it like the server's own closes
                code = exc.sent.code if exc.sent is not None else None
                if code in FRAME_CLOSES:
                    self.app.metrics.errors.labels(FRAME_CLOSES[code]).inc()
                return
            now = last_activity = time.monotonic()
            msg = m.parse_client_message(frame, max_text_chars=c.max_text_chars)
            if self.bucket.take(now):
                self.strikes = 0  # only a sustained flood closes the connection
            else:
                self.strikes += 1
                self.app.metrics.errors.labels("rate_limited").inc()
                if self.strikes > self.bucket.burst:
                    await self._close_now(1008, "message rate limit exceeded")
                    return
                # Over the limit, a text is refused and named; start, end, flush and cancel
                # still apply (dropping one would leave an utterance open or a barge-in
                # unheard), and so does a reply to a malformed message.
                if isinstance(msg, m.Text):
                    msg = m.ProtocolError(
                        "rate_limited",
                        "too many messages; this text was not accepted (send fewer, larger pieces)",
                        unspoken_text=msg.text,
                    )
            if self.app.draining and isinstance(msg, m.Text) and s.utterance is None:
                msg = m.ProtocolError("server_draining", "the server is shutting down; reconnect")
            was_authenticated = s.authenticated
            s.receive(msg, now)
            self._kick()
            if s.close_request is not None:
                await self._drain_outbound()
                await self._close_now(*s.close_request)
                return
            if s.authenticated and not was_authenticated and self.app.count(True) > c.max_sessions:
                self.app.metrics.errors.labels("server_full").inc()
                await self._close_now(1013, "server full, try again later")
                return

    async def _close_now(self, code: int, reason: str) -> None:
        """Close, reading (and dropping) what the client still sends meanwhile.

        A flooding client's queued frames would otherwise hide its close frame
        behind websockets' full receive queue, and the close would take the
        whole close timeout while the session keeps its place.
        """

        async def discard() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.conn.recv()

        reader = asyncio.create_task(discard())
        try:
            await self.conn.close(code, reason)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _drain_outbound(self) -> None:
        """Give the sender up to a second to write what is queued (the error message)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self.outbound_empty.wait()

    async def _send_loop(self) -> None:
        s, metrics = self.session, self.app.metrics
        while True:
            item = s.pop_outbound()
            if item is None:
                self.outbound_empty.set()
                await self.wake_sender.wait()
                self.wake_sender.clear()
                continue
            payload: str | bytes
            if isinstance(item, SendFrame):
                payload = item.frame.data
            elif isinstance(item, SendDone):
                payload = m.encode(s.render_done(item))
            else:
                payload = m.encode(item.message)
            try:
                async with asyncio.timeout(self.app.config.send_timeout):
                    await self.conn.send(payload)
            except TimeoutError:
                metrics.errors.labels("slow_reader").inc()
                # The client cannot take what is queued: stop computing more for it now,
                # not after the close handshake (up to close_timeout for a dead reader).
                self.session.abandon()
                await self.conn.close(1008, "client is not reading")
                return
            except ConnectionClosed:
                return
            self._sent(item, time.monotonic())

    def _sent(self, item: Outbound, now: float) -> None:
        """Bookkeeping after ``item`` was written: TTFT, underruns, metrics, log lines."""
        metrics, s = self.app.metrics, self.session
        if isinstance(item, SendFrame):
            u = item.utterance
            first = u.first_frame_at is None
            if s.frame_sent(item, now):
                metrics.underruns.inc()
                scheduler = self.app.scheduler
                log.info(  # where underruns happen tells what to tune (chunks, workers)
                    json.dumps(
                        {
                            "event": "underrun",
                            "session": s.id,
                            "segment": item.segment,
                            "audio_sent_ms": round(u.sent_ms, 1),
                            "stall_ms": round(1000 * u.stall_s, 1),
                            "engine_queue": scheduler.queued if scheduler is not None else 0,
                        }
                    )
                )
            metrics.frames.inc()
            metrics.audio_seconds.inc(item.frame.duration_ms / 1000)
            if first:  # TTFT is known now, whether the utterance ends in done or cancelled
                figures = utterance_metrics(u)
                if figures["ttft_ms"] is not None:
                    metrics.ttft.observe(figures["ttft_ms"] / 1000)
                metrics.ttfa_text.observe(figures["ttfa_from_first_text_ms"] / 1000)
        elif isinstance(item, SendDone):
            figures = utterance_metrics(item.utterance)
            metrics.utterances.labels("done").inc()
            if figures["rtf"] is not None:
                metrics.rtf.observe(figures["rtf"])
            log.info(json.dumps({"event": "utterance_done", "session": s.id, **figures}))
        elif item.message["type"] == "error":
            metrics.errors.labels(item.message["code"]).inc()
        elif item.message["type"] == "cancelled" and item.utterance is not None:
            metrics.utterances.labels("cancelled").inc()
            figures = utterance_metrics(item.utterance)
            figures["audio_sent_ms"] = item.message["audio_sent_ms"]
            log.info(json.dumps({"event": "utterance_cancelled", "session": s.id, **figures}))

    async def _produce_loop(self) -> None:
        s = self.session
        while True:
            job = s.next_job()
            if job is None:
                await self.wake_producer.wait()
                self.wake_producer.clear()
                continue
            await self._synthesize(job)
            self.wake_sender.set()

    async def _synthesize(self, job: SegmentJob) -> None:
        s, app = self.session, self.app
        assert app.engine is not None and app.scheduler is not None
        settings = job.utterance.settings
        voice = app.engine.voice(settings.voice)
        rate = voice.sample_rate
        chunks = voice.synthesize(job.text.strip(), settings.speed)

        def step() -> tuple[Any, float]:
            start = time.perf_counter()
            chunk = next(chunks, None)
            return chunk, time.perf_counter() - start

        try:
            while s.job_live(job):
                wait = s.compute_wait(job, time.monotonic())
                if wait > 0:  # ahead of the listener: wait, but wake for a cancel at once
                    self.wake_producer.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(wait, 0.25)):
                            await self.wake_producer.wait()
                    continue
                chunk, seconds = await app.scheduler.run(
                    s.compute_deadline(job, time.monotonic()),
                    step,
                    first=s.awaiting_first_audio(job),
                )
                if chunk is None:
                    s.finish_job(job, seconds)
                    return
                app.metrics.synthesized_seconds.inc(len(chunk) / rate)
                s.deliver_audio(job, chunk, seconds)
                self.wake_sender.set()
        except Exception as exc:
            log.exception("synthesis failed in session %s", s.id)
            s.fail_job(job, f"synthesis failed: {type(exc).__name__}")
        finally:
            # Cancelled (client gone) while a worker thread is inside ``chunks``: the engine
            # call runs on, so close() raises "generator already executing", which replaced
            # the CancelledError (found by tests/reliability/test_vanishing.py). The worker
            # drops the generator when its call returns; it is freed then.
            with contextlib.suppress(ValueError):
                chunks.close()


async def _listen(app: App, config: Config) -> Server:
    """The WebSocket + HTTP server on ``config.host:port``; ``OSError`` if it cannot bind."""
    return await serve(
        app.handler,
        config.host,
        config.port,
        process_request=app.process_request,
        # Browsers always send Origin; non-browser clients (CLI, bots) send none and are allowed.
        origins=[*(Origin(o) for o in config.origins), None] if config.origins else None,
        compression=None,
        max_size=config.max_message_bytes,
        max_queue=16,
        ping_interval=20,
        ping_timeout=20,
        close_timeout=5,
    )


async def main(config: Config) -> int:
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    redact.install()  # tokens never reach a log line, whatever the level
    http_log.install()  # no two lines per health probe or metrics scrape
    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server: Server = await _listen(app, config)
    except OSError as exc:  # port in use, address not on this host, no permission
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    log.info(
        "listening on http://%s:%d (WebSocket %s); loading voices",
        config.host,
        config.port,
        TTS_PATH,
    )
    started = time.perf_counter()
    load = loop.run_in_executor(
        None,
        lambda: Engine.load(
            config.voice,
            voices_dir=config.voices,
            threads=config.threads,
            concurrency=config.workers + config.urgent_workers,
        ),
    )
    waiter = asyncio.ensure_future(stop.wait())
    racers: list[asyncio.Future[Any]] = [load, waiter]
    await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
    if not load.done():
        server.close()
        await server.wait_closed()
        return 0
    try:
        app.engine = load.result()
    except Exception as exc:
        log.error("preload failed: %s", exc)
        server.close()
        return 1
    app.scheduler = EdfScheduler(config.workers, urgent_slots=config.urgent_workers)
    app.metrics.ready.set(1)
    log.info(
        "ready in %.2f s: %d voice(s), %d workers",
        time.perf_counter() - started,
        len(app.engine.voices),
        config.workers,
    )
    await stop.wait()
    app.draining = True
    app.metrics.ready.set(0)
    log.info("draining: %d session(s), grace %.1f s", len(app.sessions), config.grace)
    deadline = time.monotonic() + config.grace
    # Polling is the simple way to watch many sessions at once; it ends at the deadline.
    closing: list[asyncio.Task[None]] = []
    while time.monotonic() < deadline and any(s.utterance or s.outbound for s in app.sessions):
        closing += [t for link in list(app.links) if (t := link.leave_if_idle()) is not None]
        await asyncio.sleep(0.05)
    server.close(close_connections=True, code=1001, reason="server shutting down")
    await server.wait_closed()
    app.scheduler.shutdown()
    log.info("stopped")
    return 0


def run(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        import uvloop

        return uvloop.run(main(config))
    except ImportError:
        return asyncio.run(main(config))


if __name__ == "__main__":
    sys.exit(run())
