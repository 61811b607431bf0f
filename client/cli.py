"""``python -m client``: speak text with a firstword server, into a WAV file or the speakers.

    python -m client "Hello world" -o hello.wav
    echo "Long text ..." | python -m client -o out.wav --format mulaw --rate 8000
    python -m client "Streamed like an LLM" --tokens 8 --play

Text comes from the argument, else from stdin. Timing goes to stderr: the
server's TTFT and RTF and the client-measured time to the first frame; for
long input, progress (segments done, seconds of audio received) as it goes.

WAV output: ``pcm_s16le``, ``mulaw`` and ``alaw`` are written as 16-bit PCM
WAV (G.711 is decoded, so every player and Python's ``wave`` module read
it); ``pcm_f32le`` as a 32-bit IEEE-float WAV (format tag 3), keeping the
samples exactly. ``-o -`` writes the WAV to stdout once the audio is
complete.

Exit status: 0 done; 1 the server could not be reached, closed the
connection, sent an error event, or the ``--play`` output quit (the audio
received is still written); 2 bad usage, including ``--play`` with no
sound output available (checked before connecting); 130 interrupted with
Ctrl-C (the utterance is cancelled and the audio received so far written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import re
import shutil
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, cast
from urllib.parse import urlsplit

from client.errors import TTSConnectionError, TTSError
from client.events import FORMATS, Audio, AudioFormat, Cancelled, Done, Error, Segment
from client.session import DEFAULT_URL, TTSClient

PROGRESS_AFTER_CHARS: Final = 300
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Errors the server gives a `start` whose settings (--rate, --speed, --voice, ...) it refuses.
SETTING_ERRORS: Final = frozenset({"bad_field", "unknown_voice"})
PLAYER_COMMANDS: Final = ("aplay", "paplay", "ffplay")


# ------------------------------------------------------------------ WAV files
class WavWriter:
    """Streams mono audio into a RIFF/WAVE file; sizes are patched in on :meth:`close`.

    ``float32`` writes format tag 3 (IEEE float, with the ``fact`` chunk that
    non-PCM WAV requires), else tag 1 (16-bit PCM). An unseekable target
    (a pipe) gets the whole file on ``close``, from memory.
    """

    def __init__(self, target: BinaryIO, sample_rate: int, *, float32: bool = False) -> None:
        self.sample_rate = sample_rate
        self.float32 = float32
        self.width = 4 if float32 else 2
        self.data_bytes = 0
        self._target = target
        self._seekable = _seekable(target)
        self._out: BinaryIO = target if self._seekable else io.BytesIO()
        self._out.write(self._header(0))

    def write(self, data: bytes) -> None:
        if len(data) % self.width:
            raise ValueError(f"{len(data)} bytes is not a whole number of samples")
        self._out.write(data)
        self.data_bytes += len(data)

    @property
    def duration_ms(self) -> float:
        return self.data_bytes / self.width * 1000.0 / self.sample_rate

    def close(self) -> None:
        self._out.seek(0)
        self._out.write(self._header(self.data_bytes))
        if not self._seekable:
            assert isinstance(self._out, io.BytesIO)
            self._target.write(self._out.getvalue())
        self._target.flush()

    def _header(self, data_bytes: int) -> bytes:
        tag, bits = (3, 32) if self.float32 else (1, 16)
        fmt = struct.pack(
            "<HHIIHH", tag, 1, self.sample_rate, self.sample_rate * self.width, self.width, bits
        )
        if self.float32:
            fmt += struct.pack("<H", 0)  # cbSize: non-PCM formats carry it
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
        if self.float32:  # non-PCM WAV also needs the sample count
            chunks += b"fact" + struct.pack("<II", 4, data_bytes // self.width)
        body = b"WAVE" + chunks + b"data" + struct.pack("<I", data_bytes)
        return b"RIFF" + struct.pack("<I", len(body) + data_bytes) + body


def _seekable(f: IO[bytes]) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


# ------------------------------------------------------------------ playback
class PlayerFailed(Exception):
    """The sound output stopped working (e.g. ``paplay`` with no sound server running)."""


class Player:
    """Plays 16-bit mono PCM as it arrives: a command-line player or ``sounddevice``."""

    def __init__(self, command: list[str] | None, device_module: Any = None) -> None:
        self.command = command
        self._device_module = device_module
        self._proc: asyncio.subprocess.Process | None = None
        self._stream: Any = None
        self.name = command[0] if command else "sounddevice"

    @classmethod
    def find(cls, sample_rate: int) -> Player | None:
        """The first available output, or ``None``: aplay, paplay, ffplay on PATH, sounddevice."""
        rate = str(sample_rate)
        commands = {
            "aplay": ["-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", rate, "-"],
            "paplay": ["--raw", "--format=s16le", "--channels=1", f"--rate={rate}"],
            "ffplay": [
                *("-nodisp", "-autoexit", "-loglevel", "error"),
                *("-f", "s16le", "-ar", rate, "-ac", "1", "-i", "-"),
            ],
        }
        for name in PLAYER_COMMANDS:
            path = shutil.which(name)
            if path is not None:
                return cls([path, *commands[name]])
        try:
            module = importlib.import_module("sounddevice")
        except Exception:  # not installed, or no PortAudio library
            return None
        return cls(None, module)

    async def start(self, sample_rate: int) -> None:
        if self.command is not None:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,  # its reason, if it fails (players are quiet)
            )
        else:
            self._stream = self._device_module.RawOutputStream(
                samplerate=sample_rate, channels=1, dtype="int16"
            )
            self._stream.start()

    async def play(self, pcm16: bytes) -> None:
        """Queue ``pcm16`` for playing; raises :class:`PlayerFailed` if the player has quit."""
        if self._proc is not None and self._proc.stdin is not None:
            if self._proc.returncode is not None or self._proc.stdin.is_closing():
                raise PlayerFailed(await self._failure())
            self._proc.stdin.write(pcm16)
            try:
                await self._proc.stdin.drain()
            except ConnectionError:  # it quit while we wrote
                raise PlayerFailed(await self._failure()) from None
        elif self._stream is not None:
            await asyncio.to_thread(self._stream.write, pcm16)

    async def _failure(self) -> str:
        """Why the command-line player quit: its exit status and its last error line."""
        assert self._proc is not None
        try:
            await asyncio.wait_for(self._proc.wait(), 2.0)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        said = b""
        if self._proc.stderr is not None:
            with contextlib.suppress(TimeoutError):
                said = await asyncio.wait_for(self._proc.stderr.read(4096), 1.0)
        lines = said.decode(errors="replace").strip().splitlines()
        reason = f": {lines[-1].strip()}" if lines else ""
        return f"{self.name} exited with status {self._proc.returncode}{reason}"

    async def finish(self, timeout_s: float) -> None:
        """Let queued audio play out (at most ``timeout_s``), then stop the player."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                await asyncio.wait_for(self._proc.wait(), timeout_s)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        elif self._stream is not None:
            await asyncio.to_thread(self._stream.stop)
            self._stream.close()


# ------------------------------------------------------------------ the run
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="?", help="text to speak (default: read stdin)")
    parser.add_argument("-o", "--output", help="WAV file to write ('-' for stdout)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"server URL (default {DEFAULT_URL})")
    parser.add_argument("--format", default="pcm_s16le", choices=FORMATS, help="wire format")
    parser.add_argument("--rate", type=int, help="sample rate in Hz (default: the voice's)")
    parser.add_argument("--voice", help="voice name (see GET /v1/voices)")
    parser.add_argument("--speed", type=float, default=1.0, help="0.5-2.0, > 1 is faster")
    parser.add_argument("--frame-ms", type=int, default=20, help="audio frame length")
    parser.add_argument(
        "--tokens",
        type=float,
        metavar="RATE",
        help="stream the text word by word at RATE words/s, like an LLM",
    )
    parser.add_argument("--play", action="store_true", help="play the audio as it arrives")
    parser.add_argument("--token", help="access token, if the server requires one")
    parser.add_argument(
        "--retries", type=int, default=2, help="connection retries (backoff 0.25 s, doubling)"
    )
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in ("ws", "wss") or not urlsplit(args.url).hostname:
        parser.error(f"--url must be a ws:// or wss:// URL, not {args.url!r}")
    if args.output is None and not args.play:
        parser.error("nothing to do: give -o FILE and/or --play")
    if args.tokens is not None and not args.tokens > 0:
        parser.error("--tokens must be a positive number of words per second")
    if args.retries < 0:
        parser.error("--retries must be >= 0")
    return args


async def words_at(text: str, words_per_s: float) -> AsyncIterator[str]:
    """``text`` one word (with its trailing whitespace) at a time, ``words_per_s`` per second."""
    words = re.findall(r"\s*\S+\s*", text)
    for index, word in enumerate(words):
        if index:
            await asyncio.sleep(1.0 / words_per_s)
        yield word


class _Report:
    """Writes to stderr unless quiet; progress updates in place on a terminal."""

    def __init__(self, quiet: bool, progress: bool) -> None:
        self.quiet = quiet
        self.progress = progress and not quiet
        self.tty = sys.stderr.isatty()
        self._open_line = False

    def say(self, line: str) -> None:
        if not self.quiet:
            self._end_progress()
            print(line, file=sys.stderr)

    def error(self, line: str) -> None:
        self._end_progress()
        print(f"error: {line}", file=sys.stderr)

    def update(self, segments_done: int, audio_ms: float) -> None:
        if not self.progress:
            return
        line = f"segments done {segments_done}, audio {audio_ms / 1000:.1f} s"
        if self.tty:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
            self._open_line = True
        else:
            print(line, file=sys.stderr, flush=True)

    def _end_progress(self) -> None:
        if self._open_line:
            print(file=sys.stderr)
            self._open_line = False


async def run(args: argparse.Namespace, text: str) -> int:
    """Speak ``text``; the output file is opened once connected (a failure leaves it alone)."""
    report = _Report(args.quiet, progress=len(text) > PROGRESS_AFTER_CHARS)
    client = TTSClient(
        args.url,
        voice=args.voice,
        format=cast(AudioFormat, args.format),
        sample_rate=args.rate,
        frame_ms=args.frame_ms,
        speed=args.speed,
        token=args.token,
        # Only a file: as fast as the server can make it. Playing: paced like a listener.
        realtime=args.play,
        max_retries=args.retries,
    )
    started = time.perf_counter()
    try:
        ready = await client.connect()
    except TTSError as exc:
        if isinstance(exc, TTSConnectionError) and not exc.server_answered:
            report.error(f"{exc.message}\n       is the server running at {args.url}?")
        elif isinstance(exc, TTSConnectionError):
            report.error(f"{exc.message}\n       the server is busy or restarting; try again")
        elif exc.code in SETTING_ERRORS:  # a flag value the server does not accept
            report.error(f"the server refused the settings: {exc.code}: {exc.message}")
            return EXIT_USAGE
        else:
            report.error(f"the server refused the request: {exc.code}: {exc.message}")
        return EXIT_FAILED
    writer = None
    try:
        target = await asyncio.to_thread(_open_target, args.output)
    except OSError as exc:
        report.error(f"cannot write {args.output}: {exc}")
        await client.close()
        return EXIT_FAILED
    if target is not None:
        writer = WavWriter(target, ready.sample_rate, float32=ready.format == "pcm_f32le")
    player: Player | None = None
    if args.play:
        player = Player.find(ready.sample_rate)
        assert player is not None  # checked before connecting
        await player.start(ready.sample_rate)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
    canceller = asyncio.create_task(_cancel_on(interrupted, client))
    status = EXIT_OK
    received_ms = 0.0
    try:
        stream = await client.say(words_at(text, args.tokens) if args.tokens else text)
        async for event in stream:
            if isinstance(event, Audio):
                received_ms += event.duration_ms
                if writer is not None:
                    writer.write(event.data if writer.float32 else event.pcm16())
                if player is not None:
                    try:
                        await player.play(event.pcm16())
                    except PlayerFailed as exc:  # keep receiving: -o may still be written
                        report.error(f"sound output failed: {exc}")
                        status, player = EXIT_FAILED, None
            elif isinstance(event, Segment):
                report.update(event.index, received_ms)  # segments before this one are done
            elif isinstance(event, Error):
                report.error(f"{event.code}: {event.message}")
                status = EXIT_FAILED
            elif isinstance(event, Done):
                report.update(event.metrics.segments, received_ms)
                _print_done(report, event, stream.first_audio_s, time.perf_counter() - started)
            elif isinstance(event, Cancelled):
                report.say(f"cancelled after {event.audio_sent_ms / 1000:.2f} s of audio")
                status = EXIT_INTERRUPTED if interrupted.is_set() else EXIT_FAILED
    except TTSError as exc:
        report.error(f"{exc.code}: {exc.message}")
        status = EXIT_FAILED
    finally:
        canceller.cancel()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        await client.close()
        if writer is not None and target is not None:
            writer.close()
            if target is not sys.stdout.buffer:
                target.close()
            report.say(
                f"wrote {args.output}: {writer.duration_ms / 1000:.2f} s, "
                f"{'32-bit float' if writer.float32 else '16-bit PCM'} WAV, "
                f"{writer.sample_rate} Hz"
            )
        if player is not None:  # what is still queued in the player plays out, bounded
            await player.finish(timeout_s=10.0 + received_ms / 1000)
    return status


def _open_target(output: str | None) -> BinaryIO | None:
    if output is None:
        return None
    return sys.stdout.buffer if output == "-" else Path(output).open("wb")


async def _cancel_on(interrupted: asyncio.Event, client: TTSClient) -> None:
    await interrupted.wait()
    with contextlib.suppress(TTSError):
        await client.cancel()


def _print_done(report: _Report, done: Done, first_audio_s: float | None, wall_s: float) -> None:
    m = done.metrics
    server = f"{m.ttft_ms:.1f} ms" if m.ttft_ms is not None else "n/a"
    client = f"{1000 * first_audio_s:.1f} ms" if first_audio_s is not None else "n/a"
    rtf = f"{m.rtf:.3f}" if m.rtf is not None else "n/a"
    report.say(f"TTFT: server {server}; client {client} from request to first frame")
    report.say(
        f"audio {m.audio_ms / 1000:.2f} s in {m.segments} segment(s); RTF {rtf} "
        f"(synthesis {m.synth_ms:.0f} ms); wall {wall_s:.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.play and Player.find(args.rate or 22050) is None:
        print(
            "error: no sound output available: found none of "
            f"{', '.join(PLAYER_COMMANDS)} on PATH and cannot import sounddevice; "
            "install one (alsa-utils, pulseaudio-utils, ffmpeg or pip install sounddevice) "
            "or write a file with -o",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.text is None and sys.stdin.isatty():
        print("reading text from stdin; end it with Ctrl-D", file=sys.stderr)
    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        print("error: no text to speak (give it as an argument or on stdin)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(args, text))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
