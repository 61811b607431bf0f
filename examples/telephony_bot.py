"""A customer-service voice bot on a phone line, with barge-in.

    python examples/telephony_bot.py [--url ws://127.0.0.1:8765/v1/tts] [--interrupt-after 2.5]

What a telephony integration does, end to end, with a fake LLM and a fake caller:

1. The "LLM" streams its reply as words with small random delays; each word
   goes to the TTS server as it arrives (``TTSClient.say`` takes the async
   iterator), so speech starts before the reply is complete.
2. The gateway asks for G.711 mu-law at 8000 Hz in 20 ms frames (160 bytes),
   what a SIP/RTP leg or a Twilio-style media stream carries.
3. Frames land in a jitter buffer; a 20 ms clock sends one frame per tick to
   the caller, starting once ``--jitter-ms`` of audio is buffered. An empty
   buffer at a tick is an underrun (the caller hears a gap).
4. ``--interrupt-after`` seconds into playback the caller starts talking:
   the gateway stops sending at once, drops what it buffered, and calls
   ``cancel()``. The ``Cancelled`` event says what left the server
   (``audio_sent_ms``, ``spoken_text``); the gateway knows what it played.

The last line of output is ``SUMMARY {json}`` for scripts. Exit 0 when the
call went as planned, 1 when the server could not be reached or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import client  # noqa: F401 - installed, or run from the repository root with -m
except ImportError:  # run as a script from a checkout: examples/ is on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client import Audio, Cancelled, Done, Error, Segment, TTSClient, TTSError

FRAME_MS = 20
RATE = 8000
FRAME_BYTES = RATE * FRAME_MS // 1000  # mu-law: one byte per sample
MAX_BUFFERED_FRAMES = 1000  # 20 s: far above what the server sends ahead of real time

REPLY = (
    "Thanks for waiting, I have your account open now. I can see two orders from last week. "
    "The first one, the blue running shoes, was delivered on Thursday. The second one, the "
    "rain jacket, is still with the courier, and it should arrive by Monday. If you would like, "
    "I can send you the tracking link by text message, or I can arrange a refund if you no "
    "longer need it. Is there anything else I can help you with today?"
)


async def fake_llm(reply: str, rng: random.Random, stamps: dict[str, float]) -> AsyncIterator[str]:
    """``reply`` as LLM-style tokens: a short think, then words 20-90 ms apart."""
    await asyncio.sleep(0.3)
    for index, word in enumerate(reply.split(" ")):
        if index:
            await asyncio.sleep(rng.uniform(0.02, 0.09))
        else:
            stamps["first_token"] = time.monotonic()
        yield word + " "


@dataclass
class Gateway:
    """The media side of a call: a jitter buffer drained by a 20 ms clock."""

    jitter_frames: int
    buffer: deque[bytes] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    playing: asyncio.Event = field(default_factory=asyncio.Event)  # the first frame went out
    stream_ended: bool = False
    stopped: bool = False
    frames_received: int = 0
    bytes_received: int = 0
    frames_played: int = 0
    frames_dropped: int = 0  # in the buffer when the caller barged in
    underruns: int = 0
    first_frame_at: float | None = None
    first_played_at: float | None = None
    segments: list[Segment] = field(default_factory=list)

    def heard_text(self) -> str:
        """Segments the caller heard at least the start of (what the LLM should remember)."""
        played_ms = self.frames_played * FRAME_MS
        return " ".join(s.text for s in self.segments if s.audio_offset_ms < played_ms)

    def receive(self, frame: bytes) -> None:
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        self.frames_received += 1
        self.bytes_received += len(frame)
        if self.stopped:  # sent before the server saw the cancel: never played
            self.frames_dropped += 1
            return
        if len(self.buffer) >= MAX_BUFFERED_FRAMES:
            self.buffer.popleft()
            self.frames_dropped += 1
        self.buffer.append(frame)
        self.arrived.set()

    async def play_out(self) -> None:
        """Send one frame per 20 ms tick until stopped or the stream is played out."""
        while len(self.buffer) < self.jitter_frames and not self.stream_ended:
            self.arrived.clear()
            await self.arrived.wait()
        next_tick = time.monotonic()
        while not self.stopped:
            if self.buffer:
                self.buffer.popleft()  # a real gateway writes it to the RTP socket here
                self.frames_played += 1
                if self.first_played_at is None:
                    self.first_played_at = time.monotonic()
                    self.playing.set()
            elif self.stream_ended:
                return
            else:
                self.underruns += 1  # the caller hears a 20 ms gap
            next_tick += FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    def barge_in(self) -> None:
        """The caller talks: stop sending now and drop what is buffered."""
        self.stopped = True
        self.frames_dropped += len(self.buffer)
        self.buffer.clear()


async def call(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stamps: dict[str, float] = {}
    gateway = Gateway(jitter_frames=max(1, args.jitter_ms // FRAME_MS))
    final: Cancelled | Done | Error | None = None
    errors: list[str] = []
    async with TTSClient(args.url, format="mulaw", sample_rate=RATE, frame_ms=FRAME_MS) as tts:
        stream = await tts.say(fake_llm(REPLY, rng, stamps))

        async def receive() -> None:
            nonlocal final
            async for event in stream:
                if isinstance(event, Audio):
                    gateway.receive(event.data)
                elif isinstance(event, Segment):
                    gateway.segments.append(event)
                    print(f"  [tts] segment {event.index}: {event.text!r}")
                elif isinstance(event, Error) and not event.fatal:
                    errors.append(event.code)
                elif isinstance(event, Cancelled | Done | Error):
                    final = event
            gateway.stream_ended = True
            gateway.arrived.set()

        receiver = asyncio.create_task(receive())
        player = asyncio.create_task(gateway.play_out())
        cancelled: Cancelled | None = None
        async with asyncio.timeout(120):  # the whole call, whatever happens
            playing = asyncio.create_task(gateway.playing.wait())
            await asyncio.wait({player, playing}, return_when=asyncio.FIRST_COMPLETED)
            playing.cancel()
            interrupt_at = (gateway.first_played_at or time.monotonic()) + args.interrupt_after
            done, _ = await asyncio.wait({player}, timeout=interrupt_at - time.monotonic())
            if not done:
                print(f"  [caller] starts talking {args.interrupt_after:g} s into the reply")
                gateway.barge_in()
                cancelled = await tts.cancel()
            await player
            await receiver
    return _summary(args, stamps, gateway, cancelled, final, errors)


def _summary(
    args: argparse.Namespace,
    stamps: dict[str, float],
    gateway: Gateway,
    cancelled: Cancelled | None,
    final: Cancelled | Done | Error | None,
    errors: list[str],
) -> dict[str, Any]:
    first_token = stamps.get("first_token")

    def since_first_token(moment: float | None) -> float | None:
        if moment is None or first_token is None:
            return None
        return round(1000 * (moment - first_token), 1)

    sent_ms: float | None = None
    if isinstance(final, Cancelled):
        sent_ms = final.audio_sent_ms
    elif isinstance(final, Done):
        sent_ms = final.metrics.audio_ms
    return {
        "interrupted": cancelled is not None,
        "outcome": type(final).__name__.lower() if final is not None else None,
        "error": f"{final.code}: {final.message}" if isinstance(final, Error) else None,
        "ttft_ms": since_first_token(gateway.first_frame_at),
        "first_audio_to_caller_ms": since_first_token(gateway.first_played_at),
        "spoken_text": final.spoken_text if isinstance(final, Cancelled) else None,
        "heard_text": gateway.heard_text(),
        "unspoken_text": final.unspoken_text if isinstance(final, Cancelled) else None,
        "audio_sent_ms": sent_ms,
        "frames_received": gateway.frames_received,
        "mulaw_bytes_received": gateway.bytes_received,
        "frames_played": gateway.frames_played,
        "played_ms": gateway.frames_played * FRAME_MS,
        "frames_dropped": gateway.frames_dropped,
        "underruns": gateway.underruns,
        "nonfatal_errors": errors,
        "interrupt_after_s": args.interrupt_after,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1/tts")
    parser.add_argument(
        "--interrupt-after", type=float, default=2.5, help="seconds of playback before barge-in"
    )
    parser.add_argument("--jitter-ms", type=int, default=60, help="audio buffered before playout")
    parser.add_argument("--seed", type=int, default=7, help="seed for the fake LLM's timing")
    args = parser.parse_args(argv)
    print(f"call: customer service bot, mu-law {RATE} Hz, {FRAME_MS} ms frames, {args.url}")
    try:
        summary = asyncio.run(call(args))
    except TTSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("error: the call did not finish within 120 s", file=sys.stderr)
        return 1
    print(
        f"TTFT: {summary['ttft_ms']} ms from the LLM's first token to the first frame "
        "(includes waiting for the first phrase to be complete)"
    )
    print(f"first audio to the caller: {summary['first_audio_to_caller_ms']} ms after it")
    if summary["interrupted"]:
        print(
            f"heard: {summary['played_ms'] / 1000:.2f} s played ({summary['frames_played']} "
            f"frames); server sent {summary['audio_sent_ms']} ms; "
            f"{summary['frames_dropped']} buffered frames dropped at barge-in"
        )
        print(f"server's spoken_text (sent): {summary['spoken_text']!r}")
        print(f"heard by the caller (played): {summary['heard_text']!r}")
        print(f"not spoken: {summary['unspoken_text']!r}")
    else:
        print(f"the caller heard the whole reply: {summary['played_ms'] / 1000:.2f} s")
    print(f"underruns: {summary['underruns']}")
    print("SUMMARY " + json.dumps(summary))
    ok = summary["outcome"] in ("cancelled", "done") and summary["frames_received"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
