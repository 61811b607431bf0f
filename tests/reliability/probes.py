"""Probes for the resource tests: the server process seen from outside, and a raw WebSocket.

``ProcStat`` reads a process's resident memory, thread count and CPU time
from Linux ``/proc`` (no psutil). ``RawClient`` speaks just enough of RFC 6455
over a plain asyncio stream to do what a well-behaved library refuses to:
announce a frame it never sends, set RSV1 without an extension, stop in the
middle of a handshake or a frame, never read. Every read is bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from wsclient import scrape_metrics, speak

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HAS_PROC = Path("/proc/self/status").exists()
# For tests that read the server's /proc: skipped without it, except under CI, where a
# missing dependency must fail.
NEEDS_PROC = pytest.mark.skipif(not HAS_PROC and not IN_CI, reason="reads the server's /proc")
MB = 1024 * 1024
MAX_SAMPLING_S = 600.0  # an RssSampler stops by itself after this


# ------------------------------------------------------------------ the process
@dataclass(frozen=True)
class ProcStat:
    """One reading of a process: resident memory (bytes), threads, CPU seconds."""

    rss: int
    threads: int
    cpu_s: float

    @classmethod
    def of(cls, pid: int) -> ProcStat:
        fields: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return cls(int(fields["VmRSS"].split()[0]) * 1024, int(fields["Threads"]), cpu)


@dataclass
class RssSampler:
    """Samples a process's RSS every ``every`` seconds in the background; keeps the peak."""

    pid: int
    every: float = 0.05
    peak: int = 0
    samples: int = 0
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        for _ in range(round(MAX_SAMPLING_S / self.every)):  # or ended by stop()
            self.peak = max(self.peak, ProcStat.of(self.pid).rss)
            self.samples += 1
            await asyncio.sleep(self.every)

    def start(self) -> RssSampler:
        self.peak = ProcStat.of(self.pid).rss
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, ProcStat.of(self.pid).rss)
        return self.peak


async def metrics(http_url: str) -> dict[str, float]:
    return await asyncio.to_thread(scrape_metrics, http_url)


async def settle(
    http_url: str,
    accept: Callable[[dict[str, float]], bool],
    within: float = 15.0,
    every: float = 0.1,
) -> dict[str, float]:
    """Poll ``/metrics`` until ``accept(samples)``; the last samples either way."""
    samples = await metrics(http_url)
    for _ in range(max(1, round(within / every))):
        if accept(samples):
            break
        await asyncio.sleep(every)
        samples = await metrics(http_url)
    return samples


async def stalled(http_url: str, name: str, quiet_s: float = 1.0, within: float = 30.0) -> float:
    """Poll ``/metrics`` until sample ``name`` has not changed for ``quiet_s``; its value."""
    last, since = None, time.monotonic()
    for _ in range(max(1, round(within / 0.1))):
        value = (await metrics(http_url)).get(name, 0.0)
        now = time.monotonic()
        if value != last:
            last, since = value, now
        elif now - since >= quiet_s:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{name} still changing after {within} s")


@contextlib.contextmanager
def cpu_contention(processes: int | None = None, limit_s: float = 300.0) -> Iterator[None]:
    """Busy-loop processes, one per core by default, for the duration of the block.

    The engine's native memory steps up to a higher working set when its calls
    overlap more, which is what happens when other processes take the CPU (measured:
    +117 MB in the minute another suite loaded the machine, then level). A warm-up
    run under contention reaches that level first, so that a measurement after it
    does not read the step as growth. Each process also ends itself after ``limit_s``.
    """
    code = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
    count = processes if processes is not None else os.cpu_count() or 1
    burners = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
        for burner in burners:
            burner.wait(10)


WARM_SENTENCES = (
    "Thank you for calling, how can I help you today?",
    "Your parcel is on its way and should arrive on Friday.",
    "Please hold the line while I check that for you.",
    "The next train to the airport leaves in twelve minutes.",
)


async def warm_up_engine(
    ws_url: str,
    start: dict[str, Any] | None = None,
    *,
    texts: Sequence[str] | None = None,
    rounds: int = 3,
) -> None:
    """Whole utterances of ``texts`` (default: 8 of two short sentences), all at once,
    ``rounds`` times.

    The engine's native memory (onnxruntime arena, allocator arenas of the worker
    threads) grows to its working size on first concurrent use, and more for longer
    sentences, whoever the clients are: +100-150 MB on the reference machine. A
    memory baseline taken before this would read that growth as the fault of the
    client under test.
    """
    s = WARM_SENTENCES  # two per utterance: ~6 s of audio, little of it paced in real time
    texts = texts or [f"{s[i % len(s)]} {s[(i + 1) % len(s)]}" for i in range(8)]
    for _ in range(rounds):
        await asyncio.gather(*(speak(ws_url, t, start=start, within=60) for t in texts))


def mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:.1f} MB"


# ------------------------------------------------------------------ raw WebSocket
def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    announce: int | None = None,
    mask: bytes = b"\x00\x00\x00\x00",
) -> bytes:
    """A client (masked) frame; ``announce`` puts another length in the header than sent.

    The default all-zero masking key keeps large payloads cheap to build (the
    server cannot tell; it must unmask any key).
    """
    length = len(payload) if announce is None else announce
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    if mask != b"\x00\x00\x00\x00":
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def text_frame(message: dict[str, Any]) -> bytes:
    return frame(OP_TEXT, json.dumps(message).encode(), mask=os.urandom(4))


@dataclass
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return int(struct.unpack("!H", self.payload[:2])[0])


class RawClient:
    """One TCP connection to the server that speaks WebSocket by hand."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sock: socket.socket
    ) -> None:
        self.reader, self.writer, self.sock = reader, writer, sock
        self.response_headers: dict[str, str] = {}
        self.status: int | None = None

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None) -> RawClient:
        """Open TCP to 127.0.0.1:``port``; ``rcvbuf`` shrinks the kernel receive buffer."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        # A small stream buffer too: a client that stops reading stops at ~64 KiB.
        reader, writer = await asyncio.open_connection(sock=sock, limit=32 * 1024)
        return cls(reader, writer, sock)

    @staticmethod
    def request(port: int, extra: dict[str, str] | None = None) -> tuple[bytes, str]:
        """An opening handshake request and the ``Sec-WebSocket-Accept`` it must get back."""
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
            **(extra or {}),
        }
        lines = ["GET /v1/tts HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        return "\r\n".join(lines).encode(), accept

    async def handshake(self, port: int, extra: dict[str, str] | None = None) -> int:
        """Send the opening handshake, read the response head; its status (101 on success)."""
        request, accept = self.request(port, extra)
        self.writer.write(request)
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                self.response_headers[key.strip().lower()] = value.strip()
        if self.status == 101:
            assert self.response_headers.get("sec-websocket-accept") == accept
        return self.status

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            await self.writer.drain()

    async def read_frame(self, within: float = 10.0) -> ServerFrame:
        """The next server frame (unmasked); ``asyncio.IncompleteReadError`` at EOF."""
        async with asyncio.timeout(within):
            head = await self.reader.readexactly(2)
            length = head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return ServerFrame(head[0] & 0x0F, await self.reader.readexactly(length))

    async def close_code(self, within: float = 10.0, max_frames: int = 100_000) -> int | None:
        """Read frames until the server's close frame; its code (None if the TCP just ends)."""
        deadline = time.monotonic() + within
        for _ in range(max_frames):
            try:
                got = await self.read_frame(max(0.01, deadline - time.monotonic()))
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            if got.opcode == OP_CLOSE:
                return got.close_code
        raise AssertionError(f"no close frame in {max_frames} frames")

    def abort(self) -> None:
        """Drop the connection without a close frame (RST: unread data is discarded)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        """Close the TCP connection without a close frame (FIN)."""
        self.writer.transport.close()
