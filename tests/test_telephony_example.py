"""The telephony example (examples/telephony_bot.py) runs end to end against the real server."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, RunningServer

MULAW_BYTES_PER_MS = 8  # 8000 samples/s, one byte each


def run_example(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "telephony_bot.py"), *args],
        cwd=ROOT / "examples",  # as a user would run it: the repository root is not on sys.path
        capture_output=True,
        text=True,
        timeout=90,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert len(lines) == 1, result.stdout + result.stderr
    summary: dict[str, object] = json.loads(lines[0].removeprefix("SUMMARY "))
    return result, summary


def test_barge_in_reports_exactly_what_was_sent_and_played(server: RunningServer) -> None:
    result, s = run_example("--url", server.ws, "--interrupt-after", "1.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert s["interrupted"] is True and s["outcome"] == "cancelled"
    sent_ms = s["audio_sent_ms"]
    assert isinstance(sent_ms, float) and sent_ms > 0
    assert s["mulaw_bytes_received"] == MULAW_BYTES_PER_MS * sent_ms
    assert s["frames_received"] == s["frames_played"] + s["frames_dropped"]  # type: ignore[operator]
    played_ms = s["played_ms"]
    assert isinstance(played_ms, int) and 0 < played_ms <= 1500 + 20  # the tick at the cut
    assert played_ms <= sent_ms
    spoken, heard = s["spoken_text"], s["heard_text"]
    assert isinstance(spoken, str) and isinstance(heard, str)
    assert heard and spoken.startswith(heard)
    assert isinstance(s["ttft_ms"], float) and isinstance(s["underruns"], int)
