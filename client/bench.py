"""``python -m client.bench``: how many real-time listeners does a server hold?

    python -m client.bench --url ws://127.0.0.1:8765/v1/tts --sessions 16 --duration 30
    python -m client.bench --find-capacity --duration 20 --json capacity.json
    python -m client.bench --sessions 8 --raw-limit

``--sessions N`` clients connect ``--arrival`` seconds apart; each runs for
``--duration`` seconds from its arrival, speaking built-in texts (about 25 s
of audio each) one after another, and listens in real time: a playback
clock starts at the first frame of each utterance and plays frames back to
back. A frame that arrives after the clock needs it is an **underrun**: the
listener stalls until it arrives (counted, with the stall time), then goes
on. The next utterance starts when the previous one has played out. At the
end of a session's time its utterance in progress is cancelled (not an
error). TTFT here is client-measured: ``say()`` to the first frame.

A run **holds** when it has no errors, no underruns and TTFT p95 <= 250 ms
(``--ttft-limit-ms``). ``--find-capacity`` runs N = 4, 8, 10, 12, 14, ... (at
most ``--max-sessions``; 2 and 1 if 4 fails) and stops at the first run
that does not hold. ``--raw-limit`` then loads the engine in this process
(no server) with one thread per core, each synthesizing the same texts for
``--duration`` seconds: the raw limit in real-time streams is the audio
produced divided by the wall time. Run it with the server idle.

Every loop is bounded in time; connections go to ``--url`` only (meant for
loopback). The client's own CPU use counts: on a small machine, run the
server with ``--workers`` below the core count or read the figures as a
lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from client.events import FORMATS, Audio, AudioFormat, Done, Error
from client.session import DEFAULT_URL, TTSClient, TTSError

TEXTS: Final = (
    "Thank you for calling the support line. I can see that your order left our warehouse "
    "on Tuesday morning, and the carrier expects to deliver it by Friday afternoon. If you "
    "are not at home, the driver will leave a card with a number to call, and you can pick "
    "the parcel up from the nearest depot on any weekday between nine and five. You will "
    "also get a text message with a tracking link the evening before, so you can choose a "
    "different day or ask us to leave it with a neighbour.",
    "The weather service expects a cold front to move across the region tonight. Tomorrow "
    "will start cloudy with scattered showers, clearing by midday, with highs around twelve "
    "degrees. Winds from the north west will be strong near the coast, so ferry services may "
    "be delayed, and drivers should take care on exposed roads and bridges. The weekend looks "
    "calmer, with sunny spells on Saturday, light winds, and a chance of frost in sheltered "
    "valleys early on Sunday morning before temperatures recover.",
    "Before we change anything on your account, I need to confirm a few details. Could you "
    "tell me the postal code on your billing address, and the last four digits of the card "
    "you used for your most recent payment? Once that is done, I can update the plan, and the "
    "new price will apply from the first day of next month. You will receive a confirmation "
    "email within the hour, and if anything in it looks wrong, just reply to that message and "
    "a member of the team will call you back.",
    "Here is a quick summary of today's meeting. The design team will finish the prototype "
    "by the end of the week. Marketing needs the final screenshots on Monday, and the launch "
    "date stays on the twentieth. Anyone who has concerns about the schedule should raise "
    "them with the project lead before Thursday's review. The budget numbers will be "
    "shared on Wednesday, together with the hiring plan for the next quarter, and the office "
    "will be closed on Friday afternoon for the move to the new floor.",
    "To reset your router, first unplug it from the wall and wait about thirty seconds. Then "
    "plug it back in and wait until the light on the front turns steady green, which can take "
    "up to two minutes. If the light keeps blinking orange, press and hold the small button "
    "on the back for ten seconds, and then set up your network again. The name and password "
    "of your network are printed on the sticker underneath the router, and if none of this "
    "helps, we can send an engineer to your home.",
    "Our museum is open every day except Monday, from ten in the morning until six in the "
    "evening. On the first Friday of each month we stay open late, until nine, and entry is "
    "free after five. Guided tours leave from the main hall every hour, and the cafe on the "
    "second floor serves lunch until half past three. This season's special exhibition "
    "covers three hundred years of maps and travel writing, and the children's workshop "
    "on Saturday mornings teaches young visitors how to draw a map of their own street.",
    "I have found two flights that match your search. The first leaves at seven fifteen and "
    "arrives just after ten, with one stop. The second is a direct flight at eleven thirty, "
    "arriving at one forty, but it costs about sixty dollars more. Both include one checked "
    "bag, and seats can be chosen for free during online check in. Shall I hold the direct "
    "flight for you? The fare is guaranteed for twenty four hours, and after that it may "
    "change, because only a few seats are left at this price.",
    "Your prescription is ready for collection at the pharmacy on Station Road. Please bring "
    "a photo identity card and the reference number from your text message. If someone else "
    "is collecting it for you, they will need a signed note from you as well. The pharmacy "
    "closes at eight tonight and opens again at nine tomorrow. If you have any questions "
    "about the new dose, the pharmacist can talk them through with you in the private room, "
    "and there is no need to book an appointment for that.",
)
CAPACITY_STEPS: Final = (4, 8, 10, 12, 14, 16)


# ------------------------------------------------------------------ measuring
@dataclass
class PlaybackClock:
    """A listener playing one utterance's frames back to back from the first frame's arrival.

    :meth:`arrive` takes each frame's arrival time (seconds) and duration
    (ms). A frame arriving after the previous audio has played out is an
    underrun; playback stalls until it arrives and goes on from there.
    """

    started_at: float | None = None
    plays_until: float = 0.0  # when the audio received so far has played out
    underruns: int = 0
    underrun_ms: float = 0.0

    def arrive(self, now: float, duration_ms: float) -> None:
        if self.started_at is None:
            self.started_at = self.plays_until = now
        elif now > self.plays_until + 1e-6:  # (float sums of durations drift by far less)
            self.underruns += 1
            self.underrun_ms += 1000.0 * (now - self.plays_until)
            self.plays_until = now
        self.plays_until += duration_ms / 1000.0


@dataclass
class SessionResult:
    """What one simulated listener saw; times in milliseconds."""

    session: int
    utterances: int = 0  # started
    completed: int = 0  # ended with done
    ttft_ms: list[float] = field(default_factory=list)
    server_ttft_ms: list[float] = field(default_factory=list)
    underruns: int = 0
    underrun_ms: float = 0.0
    audio_s: float = 0.0
    errors: int = 0
    error_codes: list[str] = field(default_factory=list)

    def error(self, code: str) -> None:
        self.errors += 1
        self.error_codes.append(code)


@dataclass(frozen=True)
class Options:
    url: str
    sessions: int
    duration_s: float
    arrival_s: float
    format: AudioFormat
    sample_rate: int | None
    ttft_limit_ms: float


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 (linear interpolation), mean and max of ``values``; ``None`` when empty."""
    ordered = sorted(values)

    def at(q: float) -> float | None:
        if not ordered:
            return None
        rank = q * (len(ordered) - 1)
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (rank - low), 1)

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "mean": round(sum(ordered) / len(ordered), 1) if ordered else None,
        "max": round(ordered[-1], 1) if ordered else None,
    }


# ------------------------------------------------------------------ sessions
async def _utterance(client: TTSClient, text: str, end_at: float, result: SessionResult) -> None:
    """Speak ``text``, listen in real time until it has played out or ``end_at``."""
    loop = asyncio.get_running_loop()
    clock = PlaybackClock()
    result.utterances += 1
    requested = loop.time()
    stream = await client.say(text)
    try:
        async with asyncio.timeout_at(end_at):
            async for event in stream:
                now = loop.time()
                if isinstance(event, Audio):
                    if clock.started_at is None:
                        result.ttft_ms.append(1000.0 * (now - requested))
                    clock.arrive(now, event.duration_ms)
                    result.audio_s += event.duration_ms / 1000.0
                elif isinstance(event, Done):
                    result.completed += 1
                    if event.metrics.ttft_ms is not None:
                        result.server_ttft_ms.append(event.metrics.ttft_ms)
                elif isinstance(event, Error):
                    result.error(event.code)
            await asyncio.sleep(max(0.0, clock.plays_until - loop.time()))  # play out
    except TimeoutError:  # the session's time is up: barge in, as a caller hanging up would
        if client.busy:
            try:
                await client.cancel()
            except TTSError as exc:
                result.error(exc.code)
    finally:
        result.underruns += clock.underruns
        result.underrun_ms += clock.underrun_ms


async def _session(index: int, opts: Options, start_at: float, result: SessionResult) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    end_at = start_at + opts.duration_s
    client = TTSClient(
        opts.url,
        format=opts.format,
        sample_rate=opts.sample_rate,
        max_retries=2,
        connect_timeout_s=min(5.0, opts.duration_s),
    )
    try:
        turn = index
        while loop.time() < end_at:
            try:
                await _utterance(client, TEXTS[turn % len(TEXTS)], end_at, result)
            except TTSError as exc:
                result.error(exc.code)
                await asyncio.sleep(min(0.5, max(0.0, end_at - loop.time())))
            turn += 1
    finally:
        await client.close()


async def _progress(opts: Options, started: float, results: list[SessionResult]) -> None:
    """A progress bar on stderr: in place on a terminal, else a line every 5 s."""
    loop = asyncio.get_running_loop()
    total = opts.duration_s + opts.arrival_s * (opts.sessions - 1)
    tty = sys.stderr.isatty()
    last_line = 0.0
    try:
        while True:
            await asyncio.sleep(0.5)
            elapsed = loop.time() - started
            if not tty and elapsed - last_line < 5.0:
                continue
            last_line = elapsed
            done = min(1.0, elapsed / total)
            arrived = min(
                opts.sessions, int(elapsed // opts.arrival_s) + 1 if opts.arrival_s else 0
            )
            ttfts = [t for r in results for t in r.ttft_ms]
            p95 = percentiles(ttfts)["p95"]
            bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
            line = (
                f"[{bar}] {elapsed:5.1f}/{total:.0f} s  sessions {arrived}/{opts.sessions}  "
                f"utterances {sum(r.utterances for r in results)}  "
                f"TTFT p95 {p95 if p95 is not None else '-'} ms  "
                f"underruns {sum(r.underruns for r in results)}  "
                f"errors {sum(r.errors for r in results)}"
            )
            print(
                ("\r" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True
            )
    finally:
        if tty:
            print(file=sys.stderr)


async def run_load(opts: Options, *, progress: bool = True) -> dict[str, Any]:
    """One run of ``opts.sessions`` listeners; the report as a JSON-ready dict."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = [SessionResult(i) for i in range(opts.sessions)]
    tasks = [
        asyncio.create_task(_session(i, opts, started + i * opts.arrival_s, results[i]))
        for i in range(opts.sessions)
    ]
    bar = asyncio.create_task(_progress(opts, started, results)) if progress else None
    # Each session ends by its own clock; this bound only guards against a bug.
    limit = opts.duration_s + opts.arrival_s * opts.sessions + 60.0
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    for task, result in zip(tasks, results, strict=True):
        if task in pending:
            result.error("bench_timeout")
        elif task.exception() is not None:
            result.error(f"bench_crash: {task.exception()!r}")
    if bar is not None:
        bar.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bar
    return _report(opts, results, wall_s=loop.time() - started)


def _report(opts: Options, results: list[SessionResult], wall_s: float) -> dict[str, Any]:
    ttfts = [t for r in results for t in r.ttft_ms]
    ttft = percentiles(ttfts)
    errors = sum(r.errors for r in results)
    underruns = sum(r.underruns for r in results)
    p95 = ttft["p95"]
    holds = errors == 0 and underruns == 0 and p95 is not None and p95 <= opts.ttft_limit_ms
    return {
        "url": opts.url,
        "sessions": opts.sessions,
        "duration_s": opts.duration_s,
        "arrival_s": opts.arrival_s,
        "format": opts.format,
        "sample_rate": opts.sample_rate,
        "wall_s": round(wall_s, 2),
        "utterances": sum(r.utterances for r in results),
        "completed": sum(r.completed for r in results),
        "audio_s": round(sum(r.audio_s for r in results), 2),
        "errors": errors,
        "error_codes": dict(Counter(c for r in results for c in r.error_codes)),
        "underruns": underruns,
        "underrun_ms": round(sum(r.underrun_ms for r in results), 1),
        "ttft_ms": ttft,
        "server_ttft_ms": percentiles([t for r in results for t in r.server_ttft_ms]),
        "ttft_limit_ms": opts.ttft_limit_ms,
        "holds": holds,
        "per_session": [
            {
                **asdict(r),
                "ttft_ms": [round(t, 1) for t in r.ttft_ms],
                "underrun_ms": round(r.underrun_ms, 1),
                "audio_s": round(r.audio_s, 2),
            }
            for r in results
        ],
    }


async def find_capacity(opts: Options, max_sessions: int) -> dict[str, Any]:
    """Raise N until a run does not hold; the largest N that held (0 if none)."""
    steps = [n for n in CAPACITY_STEPS if n <= max_sessions]
    steps += list(range(CAPACITY_STEPS[-1] + 2, max_sessions + 1, 2))
    runs: list[dict[str, Any]] = []
    capacity = 0
    for n in steps:
        report = await _capacity_run(opts, n, runs)
        if not report["holds"]:
            break
        capacity = n
    if capacity == 0:
        for n in (2, 1):  # 4 was too many: look below it
            if (await _capacity_run(opts, n, runs))["holds"]:
                capacity = n
                break
    return {"capacity": capacity, "runs": runs}


async def _capacity_run(opts: Options, n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    report = await run_load(Options(**{**asdict(opts), "sessions": n}))
    runs.append(report)
    print(_summary_line(report), file=sys.stderr)
    await asyncio.sleep(1.0)  # let the server settle between runs
    return report


# ------------------------------------------------------------------ raw limit
def raw_limit(duration_s: float, threads: int | None = None) -> dict[str, Any]:
    """The machine's raw limit: one-shot synthesis throughput, in real-time streams.

    No server and no streaming: one thread per core (or ``threads``), each
    running piper's own ``PiperVoice.synthesize`` (the whole sentence in one
    onnxruntime call, one intra-op thread per call) over ``TEXTS`` until
    ``duration_s`` has passed. Real-time streams = audio seconds produced /
    wall seconds. Pauses are not counted: this is what the model itself yields.
    """
    import onnxruntime as ort  # heavy: only for --raw-limit
    from piper import PiperVoice

    from engine.piper_voice import session_options
    from engine.voice_files import default_voice_files

    files = default_voice_files()
    voice = PiperVoice.load(str(files.model))
    voice.session = ort.InferenceSession(
        str(files.model), session_options(1), providers=["CPUExecutionProvider"]
    )
    rate = voice.config.sample_rate
    for _ in voice.synthesize("Warm up."):
        pass
    count = threads or os.cpu_count() or 1
    audio_s = [0.0] * count
    started = time.perf_counter()
    deadline = started + duration_s

    def work(slot: int) -> None:
        turn = slot
        while time.perf_counter() < deadline:
            for chunk in voice.synthesize(TEXTS[turn % len(TEXTS)]):
                audio_s[slot] += len(chunk.audio_float_array) / rate
                if time.perf_counter() >= deadline:
                    break
            turn += 1

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=duration_s + 120.0)
    wall_s = time.perf_counter() - started
    total = sum(audio_s)
    return {
        "threads": count,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 2),
        "audio_s": round(total, 2),
        "streams": round(total / wall_s, 2),
    }


# ------------------------------------------------------------------ the CLI
def _summary_line(report: dict[str, Any]) -> str:
    t = report["ttft_ms"]
    return (
        f"N={report['sessions']:<3} {'holds' if report['holds'] else 'FAILS':5}  "
        f"TTFT p50 {t['p50']} / p95 {t['p95']} / p99 {t['p99']} ms  "
        f"underruns {report['underruns']} ({report['underrun_ms']} ms)  "
        f"errors {report['errors']}  utterances {report['utterances']}"
    )


def print_report(report: dict[str, Any]) -> None:
    print(
        f"{report['sessions']} sessions x {report['duration_s']:g} s "
        f"(arrival {report['arrival_s']:g} s), {report['format']}, wall {report['wall_s']} s"
    )
    print(
        f"{'session':>7} {'utts':>5} {'TTFT ms (each)':<34} {'underruns':>9} {'ms':>8} {'err':>4}"
    )
    for s in report["per_session"]:
        ttfts = " ".join(f"{t:.0f}" for t in s["ttft_ms"][:8]) + (
            " ..." if len(s["ttft_ms"]) > 8 else ""
        )
        print(
            f"{s['session']:>7} {s['utterances']:>5} {ttfts:<34} {s['underruns']:>9} "
            f"{s['underrun_ms']:>8.1f} {s['errors']:>4}"
        )
    t, st = report["ttft_ms"], report["server_ttft_ms"]
    print(
        f"TTFT (client, say() to first frame) over {t['count']} utterances: "
        f"p50 {t['p50']} ms, p95 {t['p95']} ms, p99 {t['p99']} ms, max {t['max']} ms"
    )
    print(f"TTFT (server ttft_ms, completed utterances): p50 {st['p50']} ms, p95 {st['p95']} ms")
    print(
        f"underruns {report['underruns']} ({report['underrun_ms']} ms), errors {report['errors']}"
        + (f" {report['error_codes']}" if report["error_codes"] else "")
        + f", audio received {report['audio_s']} s; "
        + ("HOLDS" if report["holds"] else "does NOT hold")
        + f" (0 underruns, 0 errors, p95 <= {report['ttft_limit_ms']:g} ms)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m client.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--sessions", type=int, default=16, help="concurrent listeners (0: none)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per session")
    parser.add_argument("--arrival", type=float, default=0.4, help="seconds between arrivals")
    parser.add_argument("--format", default="pcm_s16le", choices=FORMATS)
    parser.add_argument("--rate", type=int, help="sample rate (default: the voice's)")
    parser.add_argument("--ttft-limit-ms", type=float, default=250.0, help="p95 TTFT to hold")
    parser.add_argument("--find-capacity", action="store_true", help="search the largest N")
    parser.add_argument("--max-sessions", type=int, default=64, help="--find-capacity bound")
    parser.add_argument("--raw-limit", action="store_true", help="also measure the engine alone")
    parser.add_argument("--threads", type=int, help="--raw-limit threads (default: cores)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if args.sessions < 0 or args.duration <= 0 or args.arrival < 0 or args.max_sessions < 1:
        parser.error("need --sessions >= 0, --duration > 0, --arrival >= 0, --max-sessions >= 1")
    if args.sessions == 0 and not args.raw_limit and not args.find_capacity:
        parser.error("--sessions 0 only makes sense with --raw-limit")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = Options(
        url=args.url,
        sessions=args.sessions,
        duration_s=args.duration,
        arrival_s=args.arrival,
        format=cast(AudioFormat, args.format),
        sample_rate=args.rate,
        ttft_limit_ms=args.ttft_limit_ms,
    )
    result: dict[str, Any] = {}
    if args.find_capacity:
        result = asyncio.run(find_capacity(opts, args.max_sessions))
        print(
            f"capacity: {result['capacity']} sessions hold "
            f"(0 underruns, 0 errors, TTFT p95 <= {opts.ttft_limit_ms:g} ms)"
        )
    elif opts.sessions:
        result = asyncio.run(run_load(opts))
        print_report(result)
    if args.raw_limit:
        print(f"measuring the raw engine limit for {opts.duration_s:g} s ...", file=sys.stderr)
        raw = raw_limit(opts.duration_s, args.threads)
        result["raw_limit"] = raw
        served = (
            f"server capacity {result['capacity']} sessions"
            if "capacity" in result
            else f"server run: {opts.sessions} sessions "
            + ("held" if result.get("holds") else "did not hold")
            if opts.sessions
            else "no server run"
        )
        print(
            f"raw limit: {raw['streams']} real-time streams "
            f"({raw['audio_s']} s of audio in {raw['wall_s']} s on {raw['threads']} threads); "
            f"{served}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    failed = result.get("errors", 0) if "errors" in result else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
