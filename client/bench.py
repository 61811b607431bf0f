"""``python -m client.bench``: how many real-time listeners does a server hold?

    python -m client.bench --url ws://127.0.0.1:8765/v1/tts --sessions 16 --duration 30
    python -m client.bench --find-capacity --duration 20 --json capacity.json
    python -m client.bench --sessions 8 --raw-limit

``--sessions N`` clients connect ``--arrival`` seconds apart; each runs for
``--duration`` seconds from its arrival, speaking built-in texts (about 25 s
of audio each) one after another, and listens in real time: a playback
clock starts at the first frame of each utterance (``--playout-ms`` later
with a jitter buffer; none by default) and plays frames back to back. A
frame that arrives after the clock needs it is an **underrun**: the
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
import json
import sys
from pathlib import Path
from typing import Any, cast

from client.events import FORMATS, AudioFormat
from client.load import Options, find_capacity, run_load
from client.raw_limit import raw_limit
from client.session import DEFAULT_URL


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
    parser.add_argument(
        "--playout-ms",
        type=float,
        default=0.0,
        help="jitter buffer: playback starts this long after the first frame (default 0)",
    )
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
        playout_ms=args.playout_ms,
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
