"""Async client for protocol v1: one connection, one utterance at a time.

    async with TTSClient("ws://127.0.0.1:8765/v1/tts", format="mulaw", sample_rate=8000) as c:
        stream = await c.say(llm_tokens())       # str, or an async iterator of text pieces
        async for event in stream:               # Ready, Segment, Audio, ..., then one final event
            if isinstance(event, Audio):
                play(event.data)
        heard = await c.cancel()                 # barge-in (from another task): a Cancelled

Contracts:

- **One utterance at a time.** :meth:`TTSClient.say` raises
  :class:`UtteranceInProgress` while the previous utterance has not ended
  (its ``Done``/``Cancelled``/fatal ``Error`` has not arrived); call
  :meth:`TTSClient.cancel` first to interrupt it. Reading the old stream to
  the end is not required.
- **Every stream ends.** A stream yields the connection's :class:`Ready`,
  then the utterance's events in wire order, then exactly one final event
  (``Done``, ``Cancelled`` or an ``Error`` with ``fatal=True``), then stops.
  A connection lost mid-utterance gives ``Error("connection_lost")``; a
  server silent for ``response_timeout_s`` after ``end`` or ``cancel`` gives
  ``Error("timeout")`` and the connection is dropped. Dead peers are found
  by WebSocket pings (``ping_timeout_s``). The only unbounded wait is the
  caller's own token source.
- **Reconnects happen between utterances**, never inside one (what the
  listener heard cannot be replayed). A dropped connection is re-opened by
  the next ``say()``; connecting retries refused connections, timeouts,
  HTTP 503 (loading, draining) and closes 1013 (server full) / 1001 (going
  away) up to ``max_retries`` times with exponential backoff and jitter.
  Errors that retrying cannot fix (wrong token, unknown voice, bad URL)
  raise :class:`TTSError` at once.
- Text is sent as it arrives, merged so that at most one ``text`` message
  goes out per ``min_send_interval_s`` (the server rate-limits messages),
  each at most ``max_text_chars`` long.
- Events wait in a per-utterance queue until read. It needs no bound of its
  own: the server computes at most a few seconds of audio ahead of real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterable, Coroutine
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from client.errors import TTSConnectionError, TTSError, UtteranceInProgress
from client.events import (
    CONNECTION_LOST,
    EMPTY_INPUT,
    INPUT_FAILED,
    TIMEOUT,
    Audio,
    AudioFormat,
    Cancelled,
    Done,
    Error,
    FinalEvent,
    Ready,
    Segment,
    bytes_per_sample,
    is_final,
    parse_server_message,
)
from client.retry import RETRYABLE_CLOSE_CODES, RetryPolicy
from client.stream import Stream, Utterance
from client.text_pacing import coalesce, once

log = logging.getLogger("firstword.client")


DEFAULT_URL: Final = "ws://127.0.0.1:8765/v1/tts"
CLIENT_CLOSED: Final = "client_closed"


class _Retry(Exception):
    """A connection attempt failed in a way that may pass on a later attempt.

    ``answered``: the server was reached and said no for now (HTTP 503, close
    1013/1001), as opposed to no answer at all (refused, timeout).
    """

    def __init__(self, reason: str, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.answered = answered


class TTSClient:
    """A protocol v1 connection with lazy reconnects; use as ``async with``.

    Settings (``voice``, ``format``, ``sample_rate``, ``frame_ms``, ``speed``,
    ``realtime``) are sent in ``start`` on every (re)connect; ``None`` leaves
    the server's default. ``realtime=False`` is for a client that stores the
    audio instead of playing it: the server then sends it as fast as it can
    make it (behind every real-time listener) instead of ~4 s ahead of playback.
    ``token`` goes in ``start``, not in the URL (URLs end up in logs).

    Bounds (seconds): ``connect_timeout_s`` for the TCP + WebSocket handshake
    and again for ``ready``; ``response_timeout_s`` of server silence once
    ``end`` or ``cancel`` is sent; pings every ``ping_timeout_s``, and a ping
    unanswered that long drops the connection. Retries: ``max_retries`` per
    connect (none if ``reconnect`` is false), see :class:`RetryPolicy`.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        voice: str | None = None,
        format: AudioFormat = "pcm_s16le",
        sample_rate: int | None = None,
        frame_ms: int = 20,
        speed: float = 1.0,
        token: str | None = None,
        realtime: bool = True,
        reconnect: bool = True,
        max_retries: int = 5,
        retry_base_s: float = 0.25,
        retry_max_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        response_timeout_s: float = 15.0,
        ping_timeout_s: float = 10.0,
        min_send_interval_s: float = 0.02,
        max_text_chars: int = 2000,
        rng: random.Random | None = None,
    ) -> None:
        bytes_per_sample(format)  # fail here, not at the server, on an unknown format
        self.url = url
        start: dict[str, Any] = {"type": "start", "format": format, "frame_ms": frame_ms}
        if not realtime:
            start["realtime"] = False
        optional = {"speed": speed, "voice": voice, "sample_rate": sample_rate, "token": token}
        start.update((key, value) for key, value in optional.items() if value is not None)
        self._start_message = json.dumps(start)
        self.reconnect = reconnect
        self.retry = RetryPolicy(max_retries if reconnect else 0, retry_base_s, retry_max_s)
        self.connect_timeout_s = connect_timeout_s
        self.response_timeout_s = response_timeout_s
        self.ping_timeout_s = ping_timeout_s
        self.min_send_interval_s = min_send_interval_s
        self.max_text_chars = max_text_chars
        self._rng = rng or random.Random()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: Ready | None = None
        self._utterance: Utterance | None = None
        self._send_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._stray_cancels = 0  # cancels the server will answer after their utterance ended
        self._connected_once = False
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self.connects = 0
        """Connections opened so far (1 + reconnects)."""

    async def __aenter__(self) -> TTSClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------ connection
    @property
    def ready(self) -> Ready | None:
        """The effective settings of the open connection, or ``None`` when disconnected."""
        return self._ready if self.connected else None

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def busy(self) -> bool:
        """An utterance is in progress (``say()`` would raise)."""
        return self._utterance is not None

    async def connect(self) -> Ready:
        """Open the connection if it is not open; retry per the policy. Returns ``ready``.

        Raises :class:`TTSConnectionError` when every attempt failed, or
        :class:`TTSError` at once for failures retrying cannot fix.
        """
        async with self._connect_lock:
            return await self._connect()

    async def _connect(self) -> Ready:
        if self._closed:
            raise TTSError(CLIENT_CLOSED, "this client was closed")
        if self._ws is not None and self._ws.state is not State.OPEN:
            await self._forget_connection()
        if self._ws is not None and self._ready is not None:
            return self._ready
        if self._connected_once and not self.reconnect:
            raise TTSConnectionError(CONNECTION_LOST, "connection lost and reconnect=False")
        attempt = 0
        while True:
            try:
                return await self._open()
            except _Retry as exc:
                if attempt >= self.retry.max_retries:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    raise TTSConnectionError(
                        "connection_failed",
                        f"cannot connect to {self.url} ({tries}): {exc}",
                        server_answered=exc.answered,
                    ) from None
                delay = self.retry.delay(attempt, self._rng)
                log.info("connect to %s failed (%s); retry in %.2f s", self.url, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)

    async def _open(self) -> Ready:
        try:
            ws = await connect(
                self.url,
                open_timeout=self.connect_timeout_s,
                ping_interval=self.ping_timeout_s,
                ping_timeout=self.ping_timeout_s,
                close_timeout=2.0,
                compression=None,
                proxy=None,
                max_size=4 * 1024 * 1024,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (502, 503, 504):
                raise _Retry(f"HTTP {status}", answered=True) from None
            code = "unauthorized" if status in (401, 403) else "handshake_rejected"
            raise TTSError(code, f"the server answered HTTP {status} to the handshake") from None
        except InvalidURI as exc:
            raise TTSError("bad_url", str(exc)) from None
        except (OSError, InvalidHandshake) as exc:  # refused, reset, timeout, cut handshake
            raise _Retry(str(exc) or type(exc).__name__) from None
        try:
            ready = await self._handshake(ws)
        except BaseException:
            await ws.close()
            raise
        self._ws, self._ready = ws, ready
        self._stray_cancels = 0
        self._connected_once = True
        self.connects += 1
        self._reader = asyncio.create_task(self._read(ws))
        return ready

    async def _handshake(self, ws: ClientConnection) -> Ready:
        """Send ``start``; wait (bounded) for ``ready``."""
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await ws.send(self._start_message)
                while True:
                    event = parse_server_message(await ws.recv(), None)
                    if isinstance(event, Ready):
                        return event
                    if isinstance(event, Error):
                        raise TTSError(event.code, event.message)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
            if code in RETRYABLE_CLOSE_CODES:
                raise _Retry(f"closed with {code} {reason}".strip(), answered=True) from None
            raise TTSError("connection_refused", f"closed with {code} {reason}") from None
        except TimeoutError:
            raise _Retry(f"no ready within {self.connect_timeout_s} s") from None

    async def _forget_connection(self) -> None:
        """The socket is closing: let the reader wind down (bounded), then drop it."""
        ws, reader = self._ws, self._reader
        if reader is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(reader), self.connect_timeout_s)
        if self._ws is ws:
            self._ws = None
        if ws is not None:
            self._spawn(ws.close())

    async def close(self) -> None:
        """End the utterance in progress (``client_closed``) and close the connection."""
        self._closed = True
        u = self._utterance
        if u is not None:
            self._finish(u, Error(CLIENT_CLOSED, "the client was closed", fatal=True))
        ws, reader = self._ws, self._reader
        if ws is not None:
            await ws.close()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------ utterances
    async def say(self, text: str | AsyncIterable[str]) -> Stream:
        """Start speaking ``text`` (all at once) or the pieces of an async iterator.

        Returns at once with the utterance's :class:`Stream`; text is sent in
        the background as it arrives, then ``end``. Reconnects first if the
        connection dropped since the last utterance.
        """
        if self._utterance is not None:
            raise UtteranceInProgress("one utterance at a time: cancel() it or wait for its end")
        ready = await self.connect()
        if self._utterance is not None:  # another task started one while we connected
            raise UtteranceInProgress("one utterance at a time: cancel() it or wait for its end")
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        u = Utterance(self._ws, ready, started_at=loop.time())
        u.queue.put_nowait(ready)
        self._utterance = u
        u.sender = asyncio.create_task(self._feed(u, text))
        return Stream(u)

    async def cancel(self) -> Cancelled:
        """Stop the utterance in progress; return what it got to (barge-in).

        Text not yet sent is dropped. Audio events already received stay in
        the stream before its ``Cancelled``. If the utterance finished first
        (``Done`` won the race), the result covers all of its audio. With no
        utterance in progress, returns ``Cancelled(0.0, "", "")``. Raises
        :class:`TTSError` (``connection_lost`` or ``timeout``) if the server
        cannot confirm.
        """
        u = self._utterance
        if u is None:
            return Cancelled(0.0, "", "")
        if u.waiter is None:
            u.waiter = asyncio.get_running_loop().create_future()
            u.input_stopped = True
            async with self._send_lock:  # lets a text send in flight complete first
                if u.sender is not None:
                    u.sender.cancel()
                if not u.finished:
                    try:
                        await u.ws.send('{"type":"cancel"}')
                        u.cancel_sent = True
                        self._await_server(u)
                    except ConnectionClosed:
                        pass  # the reader ends the utterance with connection_lost
            self._settle_waiter(u)
        return await asyncio.shield(u.waiter)

    # ------------------------------------------------------------- internals
    async def _feed(self, u: Utterance, text: str | AsyncIterable[str]) -> None:
        """Send the text as it comes, then ``end``. Runs as the utterance's sender task."""
        source: AsyncIterable[str] = once(text) if isinstance(text, str) else text
        sent_any = False
        try:
            async with contextlib.aclosing(
                coalesce(source, self.min_send_interval_s, self.max_text_chars)
            ) as pieces:
                async for piece in pieces:
                    if not await self._send(u, {"type": "text", "text": piece}):
                        return
                    sent_any = True
            if not sent_any:
                self._finish(u, Error(EMPTY_INPUT, "nothing to say: the input held no text", True))
            elif await self._send(u, {"type": "end"}):
                self._await_server(u)
        except ConnectionClosed:
            return  # the reader reports connection_lost
        except Exception as exc:  # the caller's token source failed
            reason = f"the text source raised {type(exc).__name__}: {exc}"
            if not sent_any:
                self._finish(u, Error(INPUT_FAILED, reason, fatal=True))
                return
            u.queue.put_nowait(Error(INPUT_FAILED, reason))
            u.sender = None  # cancel() must not cancel this task from inside itself
            with contextlib.suppress(TTSError):
                await self.cancel()

    async def _send(self, u: Utterance, message: dict[str, str]) -> bool:
        async with self._send_lock:
            if u.input_stopped or u.finished:
                return False
            await u.ws.send(json.dumps(message, ensure_ascii=False))
            return True

    def _await_server(self, u: Utterance) -> None:
        """From now on the server owes an answer: time it out after ``response_timeout_s``."""
        u.last_heard_at = asyncio.get_running_loop().time()
        if u.watchdog is None and not u.finished:
            u.watchdog = asyncio.create_task(self._watch(u))

    async def _watch(self, u: Utterance) -> None:
        loop = asyncio.get_running_loop()
        while not u.finished:
            remaining = u.last_heard_at + self.response_timeout_s - loop.time()
            if remaining <= 0:
                message = f"no answer from the server for {self.response_timeout_s} s"
                self._finish(u, Error(TIMEOUT, message, fatal=True))
                await u.ws.close(1011, "client timeout")  # its state is unknown: start over
                return
            await asyncio.sleep(remaining)

    async def _read(self, ws: ClientConnection) -> None:
        """Route server frames to the utterance in progress until the connection closes."""
        reason = "connection closed"
        try:
            while True:
                frame = await ws.recv()
                self._dispatch(ws, frame)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            reason = (
                f"connection closed by the server ({rcvd.code} {rcvd.reason})".strip()
                if rcvd is not None
                else "connection lost (no close frame)"
            )
        except Exception as exc:  # a bug here must not leave an utterance waiting forever
            log.exception("client reader failed")
            reason = f"client reader failed: {type(exc).__name__}"
            await ws.close(1011, "client error")
        finally:
            if self._ws is ws:
                self._ws = None
            u = self._utterance
            if u is not None and u.ws is ws:
                self._finish(u, Error(CONNECTION_LOST, reason, fatal=True))

    def _dispatch(self, ws: ClientConnection, frame: str | bytes) -> None:
        event = parse_server_message(frame, self._ready)
        if event is None:
            return
        u = self._utterance
        if isinstance(event, Ready):
            self._ready = event
            return
        if isinstance(event, Cancelled) and self._stray_cancels > 0:
            self._stray_cancels -= 1  # the answer to a cancel that lost the race with done
            return
        if u is None or u.ws is not ws:
            if isinstance(event, Error):
                log.warning("server error outside an utterance: %s %s", event.code, event.message)
            return
        u.last_heard_at = asyncio.get_running_loop().time()
        if isinstance(event, Audio):
            if u.first_audio_at is None:
                u.first_audio_at = u.last_heard_at
            u.received_bytes += len(event.data)
            u.received_ms += event.duration_ms
        elif isinstance(event, Segment):
            u.segments.append(event.text)
        if is_final(event):
            assert isinstance(event, Done | Cancelled | Error)
            self._finish(u, event)
            if isinstance(event, Error) and event.code in ("server_draining", "bad_server_message"):
                self._spawn(ws.close())  # so that the next say() reconnects
        else:
            u.queue.put_nowait(event)

    def _finish(self, u: Utterance, final: FinalEvent) -> None:
        """End ``u`` with ``final``: queue it and the end marker, stop its tasks."""
        if u.finished:
            return
        u.final = final
        u.input_stopped = True
        u.queue.put_nowait(final)
        u.queue.put_nowait(None)
        if self._utterance is u:
            self._utterance = None
        if u.cancel_sent and not isinstance(final, Cancelled) and self._ws is u.ws:
            self._stray_cancels += 1  # the server will still answer our cancel
        current = asyncio.current_task()
        for task in (u.sender, u.watchdog):
            if task is not None and task is not current and not task.done():
                task.cancel()
        self._settle_waiter(u)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _settle_waiter(u: Utterance) -> None:
        waiter, final = u.waiter, u.final
        if waiter is None or final is None or waiter.done():
            return
        if isinstance(final, Cancelled):
            waiter.set_result(final)
        elif isinstance(final, Done):
            waiter.set_result(Cancelled(u.received_ms, " ".join(u.segments), ""))
        else:
            waiter.set_exception(TTSError(final.code, final.message))
