"""One utterance on the client: its state (kept by ``TTSClient``) and the ``Stream`` read."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection

from client.events import Cancelled, Event, FinalEvent, Ready


@dataclass(eq=False)
class Utterance:
    """Client-side state of one utterance; owned by :class:`TTSClient`."""

    ws: ClientConnection
    ready: Ready
    started_at: float
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    sender: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    waiter: asyncio.Future[Cancelled] | None = None  # cancel() in progress
    input_stopped: bool = False
    cancel_sent: bool = False
    final: FinalEvent | None = None
    last_heard_at: float = 0.0
    first_audio_at: float | None = None
    received_bytes: int = 0
    received_ms: float = 0.0
    segments: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.final is not None


class Stream:
    """The events of one utterance; async-iterate it. See the module docstring."""

    def __init__(self, utterance: Utterance) -> None:
        self._u = utterance
        self._exhausted = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Event:
        if self._exhausted:
            raise StopAsyncIteration
        item = await self._u.queue.get()
        if item is None:
            self._exhausted = True
            raise StopAsyncIteration
        return item

    @property
    def ready(self) -> Ready:
        """Settings of the connection this utterance runs on (format, rate, frame size)."""
        return self._u.ready

    @property
    def final(self) -> FinalEvent | None:
        """The event that ended the utterance, once it has arrived (even if not read yet)."""
        return self._u.final

    @property
    def received_bytes(self) -> int:
        """Audio bytes received so far."""
        return self._u.received_bytes

    @property
    def received_ms(self) -> float:
        """Audio received so far, in milliseconds."""
        return self._u.received_ms

    @property
    def first_audio_s(self) -> float | None:
        """Seconds from ``say()`` to the first audio frame's arrival (client-measured TTFA)."""
        u = self._u
        return None if u.first_audio_at is None else u.first_audio_at - u.started_at
