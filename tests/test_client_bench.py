"""Tests for the load tool (client/bench.py): its clock and statistics, and a short real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, RunningServer

from client.listening import PlaybackClock, percentiles


def test_playback_clock_counts_late_frames_and_stalls() -> None:
    clock = PlaybackClock()
    clock.arrive(10.0, 200)  # plays 10.0-10.2
    clock.arrive(10.1, 200)  # early: queued, plays 10.2-10.4
    clock.arrive(10.4, 20)  # just in time
    assert (clock.underruns, clock.underrun_ms) == (0, 0.0)
    clock.arrive(10.52, 20)  # needed at 10.42: 100 ms stall, then plays 10.52-10.54
    assert clock.underruns == 1 and clock.underrun_ms == pytest.approx(100.0)
    clock.arrive(10.53, 20)
    assert clock.underruns == 1 and clock.plays_until == pytest.approx(10.56)


def test_playback_clock_playout_delay_absorbs_that_much_lateness() -> None:
    clock = PlaybackClock(playout_ms=20.0)
    clock.arrive(10.0, 200)  # starts playing at 10.02, plays until 10.22
    clock.arrive(10.215, 100)  # 15 ms later than a clock without the buffer would need it
    assert (clock.underruns, clock.started_at) == (0, 10.0)
    assert clock.plays_until == pytest.approx(10.32)
    clock.arrive(10.35, 20)  # 30 ms late even with the buffer
    assert clock.underruns == 1 and clock.underrun_ms == pytest.approx(30.0)


def test_percentiles() -> None:
    figures = percentiles([float(v) for v in range(1, 101)])
    assert (figures["p50"], figures["p99"], figures["max"]) == (50.5, 99.0, 100.0)
    assert figures["p95"] == pytest.approx(95.05, abs=0.051)  # rounded to 0.1 ms
    assert percentiles([])["p95"] is None
    assert percentiles([7.0])["p99"] == 7.0


def test_short_run_reports_percentiles_and_no_errors(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "client.bench", "--url", server.ws),
            *("--sessions", "2", "--duration", "5", "--json", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["sessions"] == 2 and report["errors"] == 0, report["error_codes"]
    ttft = report["ttft_ms"]
    assert ttft["count"] >= 2
    assert 0 < ttft["p50"] <= ttft["p95"] <= ttft["p99"]
    # Underruns depend on the machine's load; only their form is checked.
    assert isinstance(report["underruns"], int) and isinstance(report["holds"], bool)
    assert len(report["per_session"]) == 2
    for session in report["per_session"]:
        assert isinstance(session["underruns"], int) and session["underruns"] >= 0
        assert isinstance(session["underrun_ms"], float | int) and session["utterances"] >= 1
        assert session["errors"] == 0 and len(session["ttft_ms"]) >= 1
    assert "TTFT (client" in result.stdout and "p95" in result.stdout
