"""A small protocol v1 client for the loopback tests: every wait is bounded.

``collect`` reads server events (JSON messages as dicts, audio as bytes) until
a ``done`` or ``cancelled`` arrives, the connection closes, or a time or count
bound is hit; it never waits forever. ``speak`` runs one whole utterance.
``scrape_metrics`` reads the server's ``/metrics`` into a dict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Event = dict[str, Any] | bytes
"""A server event: a parsed JSON message, or one binary audio frame."""

FINAL_TYPES = ("done", "cancelled")
DEFAULT_WITHIN_S = 30.0
MAX_EVENTS = 100_000
POLL_S = 0.05
MS_ROUNDING = 0.051  # the server rounds milliseconds to 0.1


@dataclass
class Collected:
    """Server events in arrival order, with arrival times (``time.monotonic``)."""

    events: list[Event] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    closed: bool = False  # the connection closed while collecting

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict)]

    @property
    def frames(self) -> list[bytes]:
        return [e for e in self.events if isinstance(e, bytes)]

    @property
    def audio_bytes(self) -> int:
        return sum(len(f) for f in self.frames)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [msg for msg in self.messages if msg["type"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        """The only message of type ``kind``; AssertionError if there are 0 or several."""
        found = self.of_type(kind)
        assert len(found) == 1, f"expected one {kind!r}, got {len(found)}: {self.summary()}"
        return found[0]

    @property
    def types(self) -> list[str]:
        """Event types in order; audio frames are ``"audio"``."""
        return [_kind(e) for e in self.events]

    @property
    def final(self) -> dict[str, Any] | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, dict) and last["type"] in FINAL_TYPES else None

    def summary(self) -> str:
        """Types in order with runs of audio collapsed, for assertion messages."""
        out: list[str] = []
        for kind in self.types:
            if kind == "audio" and out and out[-1].startswith("audio"):
                count = int(out[-1].partition("x")[2] or 1) + 1
                out[-1] = f"audio x{count}"
            else:
                out.append(kind)
        return ", ".join(out)


def _kind(event: Event) -> str:
    return "audio" if isinstance(event, bytes) else str(event["type"])


async def send_json(conn: ClientConnection, message: Mapping[str, Any]) -> None:
    await conn.send(json.dumps(message))


async def collect(
    conn: ClientConnection,
    *,
    until: Iterable[str] = FINAL_TYPES,
    within: float = DEFAULT_WITHIN_S,
    max_events: int = MAX_EVENTS,
    into: Collected | None = None,
) -> Collected:
    """Read events until one whose type is in ``until`` (included), a close, or a bound.

    Audio frames have the type ``"audio"``, so ``until=("audio",)`` stops at the
    first frame; ``until=()`` reads until the connection closes. A close ends
    collection normally with ``closed`` set (see ``conn.close_code``). Raises
    ``TimeoutError`` after ``within`` seconds and ``AssertionError`` past
    ``max_events`` events.
    """
    stop = frozenset(until)
    got = into if into is not None else Collected()
    async with asyncio.timeout(within):
        for _ in range(max_events):
            try:
                raw = await conn.recv()
            except ConnectionClosed:
                got.closed = True
                return got
            event: Event = raw if isinstance(raw, bytes) else json.loads(raw)
            got.events.append(event)
            got.times.append(time.monotonic())
            if _kind(event) in stop:
                return got
    raise AssertionError(f"more than {max_events} events: {got.summary()}")


async def wait_closed(conn: ClientConnection, within: float = 10.0) -> Collected:
    """Read (and keep) whatever arrives until the server closes the connection."""
    return await collect(conn, until=(), within=within)


async def read_for(conn: ClientConnection, seconds: float) -> Collected:
    """Everything that arrives within ``seconds`` (less if the connection closes)."""
    got = Collected()
    with contextlib.suppress(TimeoutError):
        await collect(conn, until=(), within=seconds, into=got)
    return got


async def speak(
    url: str,
    text: str | list[str],
    start: Mapping[str, Any] | None = None,
    *,
    within: float = DEFAULT_WITHIN_S,
    **connect_options: Any,
) -> Collected:
    """Connect, send ``start`` (if given), the text (one message per item), ``end``;
    collect until ``done`` or ``cancelled``, then close."""
    pieces = [text] if isinstance(text, str) else text
    async with asyncio.timeout(within):
        async with connect(url, open_timeout=10, **connect_options) as conn:
            if start is not None:
                await send_json(conn, {"type": "start", **start})
            for piece in pieces:
                await send_json(conn, {"type": "text", "text": piece})
            await send_json(conn, {"type": "end"})
            return await collect(conn, within=within)


def check_utterance(got: Collected, *, rate: int = 22050, width: int = 2) -> dict[str, Any]:
    """Assert one utterance's wire contract; return ``done.metrics``.

    ``ready`` (if present) comes first and once; segment indexes count 0, 1, …;
    no audio comes before segment 0; each segment's ``audio_offset_ms`` is the
    audio received before its message (the pause between segments precedes
    the next segment's message); every segment has audio; ``done`` comes last
    and its ``audio_ms`` and ``segments`` match what was received.
    """
    final = got.final
    assert final is not None and final["type"] == "done", got.summary()
    types = got.types
    assert types.count("done") == 1, got.summary()
    assert "error" not in types and "cancelled" not in types, got.messages
    if "ready" in types:
        assert types.index("ready") == 0 and types.count("ready") == 1, got.summary()
    received_ms = 0.0
    audio_per_segment: list[int] = []
    for event in got.events:
        if isinstance(event, bytes):
            assert audio_per_segment, f"audio before the first segment: {got.summary()}"
            assert len(event) % width == 0
            received_ms += len(event) / width * 1000 / rate
            audio_per_segment[-1] += len(event)
        elif event["type"] == "segment":
            assert event["index"] == len(audio_per_segment), got.summary()
            assert event["text"] and event["text"] == event["text"].strip(), event
            assert abs(event["audio_offset_ms"] - received_ms) <= MS_ROUNDING, event
            audio_per_segment.append(0)
    assert audio_per_segment and all(audio_per_segment), got.summary()
    metrics: dict[str, Any] = final["metrics"]
    assert metrics["segments"] == len(audio_per_segment)
    assert abs(metrics["audio_ms"] - received_ms) <= MS_ROUNDING, (metrics, received_ms)
    return metrics


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$")


def scrape_metrics(http_url: str, timeout: float = 5.0) -> dict[str, float]:
    """``/metrics`` of the server at ``http_url`` as ``{'name{labels}': value}``.

    Blocking (urllib); call it through ``asyncio.to_thread`` from a test coroutine.
    """
    with urllib.request.urlopen(http_url + "/metrics", timeout=timeout) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples[match.group(1)] = float(match.group(2))
    return samples


async def wait_for_metric(
    http_url: str, name: str, accept: Callable[[float], bool], within: float = 5.0
) -> float:
    """Poll ``/metrics`` until sample ``name`` exists and ``accept(value)``; return it.

    Raises ``TimeoutError`` (with the last value seen) after ``within`` seconds.
    """
    value: float | None = None
    for _ in range(max(1, round(within / POLL_S))):
        value = (await asyncio.to_thread(scrape_metrics, http_url)).get(name)
        if value is not None and accept(value):
            return value
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"{name} = {value} after {within} s")
