"""Simulated real-time listeners against a server: one load run, and the search for capacity.

``run_load(opts)`` starts ``opts.sessions`` listeners ``opts.arrival_s`` apart;
each speaks ``client.load_texts.TEXTS`` one after another for ``opts.duration_s``
and plays the audio on a ``PlaybackClock``. The report (a JSON-ready dict) says
whether the run **holds**: no errors, no underruns, TTFT p95 within the limit.
``find_capacity`` raises the number of listeners until a run does not hold.
Every loop is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Final

from client.errors import TTSError
from client.events import Audio, AudioFormat, Done, Error
from client.listening import PlaybackClock, SessionResult, percentiles
from client.load_texts import TEXTS
from client.session import TTSClient

CAPACITY_STEPS: Final = (4, 8, 10, 12, 14, 16)


@dataclass(frozen=True)
class Options:
    """One load run: ``sessions`` listeners, ``arrival_s`` apart, each for ``duration_s``.

    ``format``/``sample_rate`` are requested from the server (``None``: the
    voice's rate); a run holds when client TTFT p95 <= ``ttft_limit_ms``;
    ``playout_ms`` is each listener's jitter buffer (``PlaybackClock``).
    """

    url: str
    sessions: int
    duration_s: float
    arrival_s: float
    format: AudioFormat
    sample_rate: int | None
    ttft_limit_ms: float
    playout_ms: float = 0.0


async def _utterance(
    client: TTSClient, text: str, end_at: float, result: SessionResult, playout_ms: float
) -> None:
    """Speak ``text``, listen in real time until it has played out or ``end_at``."""
    loop = asyncio.get_running_loop()
    clock = PlaybackClock(playout_ms=playout_ms)
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
                await _utterance(client, TEXTS[turn % len(TEXTS)], end_at, result, opts.playout_ms)
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
        "playout_ms": opts.playout_ms,
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
    print(summary_line(report), file=sys.stderr)
    await asyncio.sleep(1.0)  # let the server settle between runs
    return report


def summary_line(report: dict[str, Any]) -> str:
    t = report["ttft_ms"]
    return (
        f"N={report['sessions']:<3} {'holds' if report['holds'] else 'FAILS':5}  "
        f"TTFT p50 {t['p50']} / p95 {t['p95']} / p99 {t['p99']} ms  "
        f"underruns {report['underruns']} ({report['underrun_ms']} ms)  "
        f"errors {report['errors']}  utterances {report['utterances']}"
    )
