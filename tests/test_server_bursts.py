"""A burst of utterances starting at once: listeners already hearing audio keep hearing it.

16 real-time listeners (the load tool's, in this process) start at the same
moment on a fresh server with the default flags. Giving each its first
0.84 s costs ~123 ms of compute, ~1 s of both cores for all of them; before
the scheduler protected listeners about to run out (``service.scheduler``,
rule 1), every first chunk ran before anyone's third, and measured on the
2-core reference machine 9-14 of the 16 heard a gap at 0.84 s (0.6-1.8 s of
stalls in all, two runs). Now first audio for the last of them comes later
instead, and nobody hears a gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import RunningServer
from wsclient import scrape_metrics

from client.load import Options, run_load
from protocol.session import UNDERRUN_SLACK_S

pytestmark = pytest.mark.timeout(180)

LISTENERS = 16
# 0-1 underruns (at most 47 ms) in six runs on the reference machine; a lone late frame under
# a noisy neighbour is tolerated, the old behaviour's hundreds of ms of gaps are not.
MAX_UNDERRUNS = 3
MAX_STALL_MS = 200.0
MAX_TTFT_MS = 4000.0  # nobody is starved: the last first audio came at ~1.3 s


async def test_a_burst_of_starts_leaves_no_listener_with_a_gap(
    server_factory: Callable[..., RunningServer],
) -> None:
    srv = server_factory()
    report = await run_load(
        Options(
            url=srv.ws,
            sessions=LISTENERS,
            duration_s=6.0,
            arrival_s=0.0,
            format="pcm_s16le",
            sample_rate=None,
            ttft_limit_ms=MAX_TTFT_MS,
            playout_ms=1000.0 * UNDERRUN_SLACK_S,  # as the server counts lateness
        ),
        progress=False,
    )
    server = await asyncio.to_thread(scrape_metrics, srv.http)
    summary = (
        f"{LISTENERS} at once: TTFT p50/p95/max {report['ttft_ms']}, "
        f"underruns {report['underruns']} ({report['underrun_ms']} ms), "
        f"server underruns {server.get('firstword_underruns_total')}, errors {report['errors']}"
    )
    print(summary)
    assert report["errors"] == 0, summary
    assert report["utterances"] >= LISTENERS, summary
    assert report["underruns"] <= MAX_UNDERRUNS, summary
    assert report["underrun_ms"] <= MAX_STALL_MS, summary
    assert server["firstword_underruns_total"] <= MAX_UNDERRUNS, summary
    assert report["ttft_ms"]["max"] is not None and report["ttft_ms"]["max"] < MAX_TTFT_MS
