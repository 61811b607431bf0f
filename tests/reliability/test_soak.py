"""Soak: the load tool's listeners at ~80 % of capacity for minutes; nothing degrades.

``FIRSTWORD_SOAK_SECONDS`` (default 60, the form CI runs; 600 for the full
run) sets the length; ``FIRSTWORD_SOAK_SESSIONS`` (default 21) the number of
concurrent real-time listeners. 21 is 80 % of the 26 sessions that
``python -m client.bench --find-capacity`` found holding on the 2-core
reference machine (raw engine limit 27.2 streams): enough load that a leak or a
scheduling fault shows up as underruns. The load tool's own CPU counts against
it (it runs in this process). Set it to 80 % of your machine's capacity.

The server is warmed up first with the same listeners for ``WARMUP_S``
(``FIRSTWORD_SOAK_WARMUP_SECONDS``, default 60), under CPU contention
(``probes.cpu_contention``): the engine's native memory (onnxruntime and
allocator arenas) grows to its working size during the first minute or two of
full load, whoever the clients are, and steps up again when other processes
take the CPU. The resident-memory baseline is taken after that, idle. The run must have no
errors, no underruns (the listeners' playback clocks and the server's own
``firstword_underruns_total``), and end with less than 5 % more memory than
it started with, every session closed and no task or thread left over.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RunningServer
from probes import NEEDS_PROC, ProcStat, cpu_contention, mb, settle
from wsclient import check_utterance, speak

from client.load import Options, run_load
from protocol.session import UNDERRUN_SLACK_S

SOAK_S = float(os.environ.get("FIRSTWORD_SOAK_SECONDS", "60"))
SESSIONS = int(os.environ.get("FIRSTWORD_SOAK_SESSIONS", "21"))
# The engine's native memory grows for the first minute or two of full load (18 sessions,
# idle RSS after each 20 s: 454, 489, 517, 524, 533, 535 MB); the baseline comes after.
WARMUP_S = float(os.environ.get("FIRSTWORD_SOAK_WARMUP_SECONDS", "60"))
RSS_GROWTH_LIMIT = 0.05
# The listeners' jitter buffer: the server's own underrun slack (protocol.session), so a
# listener and the server call the same lateness an underrun. Without it, a listener counts
# its own event loop's lateness (the load tool shares this process and the two cores):
# 2 underruns of ~9 ms in 1 165 s of audio in one quiet run where the server counted none.
PLAYOUT_MS = 1000.0 * UNDERRUN_SLACK_S
SAMPLE_EVERY_S = 1.0
SENTENCE = "Please call me back tomorrow morning."
PROBED = (
    "firstword_underruns_total",
    "firstword_active_sessions",
    "firstword_engine_queue",
    "firstword_event_loop_tasks",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(SOAK_S + WARMUP_S + 300),
    NEEDS_PROC,
]


def options(url: str, duration_s: float, arrival_s: float = 0.4) -> Options:
    return Options(
        url=url,
        sessions=SESSIONS,
        duration_s=duration_s,
        arrival_s=arrival_s,
        format="pcm_s16le",
        sample_rate=None,
        ttft_limit_ms=250.0,
        playout_ms=PLAYOUT_MS,
    )


async def idle_state(srv: RunningServer) -> tuple[dict[str, float], ProcStat]:
    samples = await settle(
        srv.http,
        lambda s: s["firstword_active_sessions"] == 0 and s["firstword_engine_queue"] == 0,
        within=20,
    )
    await asyncio.sleep(1.0)  # engine calls still running finish, the allocator settles
    return samples, ProcStat.of(srv.process.pid)


def total(samples: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix))


async def test_soak_at_80_percent_of_capacity(
    server_factory: Callable[..., RunningServer],
) -> None:
    srv = server_factory()
    pid = srv.process.pid
    started = ProcStat.of(pid)
    solo_before = check_utterance(await speak(srv.ws, SENTENCE))["ttft_ms"]
    with cpu_contention():  # reach the working set that contention would step up to
        await run_load(options(srv.ws, WARMUP_S, arrival_s=0.1), progress=False)
    before, base = await idle_state(srv)
    for name in PROBED:  # a renamed metric must fail loudly, not read as zero
        assert name in before, sorted(before)

    rss: list[tuple[float, int]] = []

    async def sample() -> None:
        t0 = time.monotonic()
        for _ in range(round((SOAK_S + 300) / SAMPLE_EVERY_S)):  # or cancelled at the end
            rss.append((time.monotonic() - t0, ProcStat.of(pid).rss))
            await asyncio.sleep(SAMPLE_EVERY_S)

    sampler = asyncio.create_task(sample())
    try:
        report = await run_load(options(srv.ws, SOAK_S), progress=False)
    finally:
        sampler.cancel()
    after, end = await idle_state(srv)
    solo_after = check_utterance(await speak(srv.ws, SENTENCE))["ttft_ms"]

    def delta(name: str) -> float:
        return total(after, name) - total(before, name)

    peak = max(r for _, r in rss)
    growth = (end.rss - base.rss) / base.rss
    ttft = report["ttft_ms"]
    figures: dict[str, Any] = {
        "sessions": SESSIONS,
        "soak_s": SOAK_S,
        "utterances": report["utterances"],
        "completed": report["completed"],
        "audio_s": report["audio_s"],
        "errors": report["errors"],
        "error_codes": report["error_codes"],
        "client_underruns": report["underruns"],
        "client_underrun_ms": report["underrun_ms"],
        "server_underruns": delta("firstword_underruns_total"),
        "server_errors": delta("firstword_errors_total"),
        "ttft_p50_p95_p99_ms": [ttft["p50"], ttft["p95"], ttft["p99"]],
        "server_ttft_p95_ms": report["server_ttft_ms"]["p95"],
        "solo_ttft_before_after_ms": [solo_before, solo_after],
        "rss_start_mb": round(started.rss / 2**20, 1),
        "rss_warm_mb": round(base.rss / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_end_mb": round(end.rss / 2**20, 1),
        "rss_growth": round(growth, 4),
        # Under load, at each tenth of the run (MB): a leak climbs, a working set levels off.
        "rss_timeline_mb": [
            round(rss[min(len(rss) - 1, i * len(rss) // 10)][1] / 2**20, 1) for i in range(11)
        ],
        "threads": [base.threads, end.threads],
        "tasks": [before["firstword_event_loop_tasks"], after["firstword_event_loop_tasks"]],
        "load_average": os.getloadavg(),
    }
    print("soak figures:", json.dumps(figures))
    print(f"RSS {mb(base.rss)} -> {mb(end.rss)} ({growth:+.2%}), peak {mb(peak)}")

    assert report["errors"] == 0, figures
    assert figures["server_errors"] == 0, figures
    assert figures["server_underruns"] == 0, figures
    assert report["underruns"] == 0, figures
    assert growth < RSS_GROWTH_LIMIT, figures
    assert after["firstword_active_sessions"] == 0
    assert after["firstword_event_loop_tasks"] <= before["firstword_event_loop_tasks"], figures
    assert end.threads <= base.threads, figures
    assert report["completed"] > 0 and srv.process.poll() is None
