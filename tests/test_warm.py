"""Tests for engine.warm and the concurrent warm-up of a loaded voice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.warm import run_together

ROOT = Path(__file__).resolve().parent.parent
MB = 2**20

# Loads the default voice warmed for `concurrency` calls, notes RSS, then runs the widest
# windows on four threads at once (what a busy server with 2 + 2 engine workers does) and
# notes RSS again. Its own process: nothing else in it holds memory.
PROBE = """
import json, sys
from engine import Engine
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
engine = Engine.load(cache_dir=sys.argv[2], concurrency=int(sys.argv[1]))
ready = rss()
for _ in range(5):
    engine.voice().warm(4)
print(json.dumps({"ready": ready, "busy": rss()}))
"""


def test_copies_run_at_the_same_time() -> None:
    # Only copies that are all inside the task at once get past this barrier in time.
    inside = threading.Barrier(3, timeout=10)
    passed: list[int] = []
    run_together(lambda sync: passed.append(inside.wait()), 3)
    assert sorted(passed) == [0, 1, 2]


def test_sync_lines_the_copies_up_stage_by_stage() -> None:
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def task(sync: Callable[[], None]) -> None:
        for stage in range(3):
            sync()
            with lock:
                events.append(("start", stage))
            time.sleep(0.01 * (3 - stage))
            with lock:
                events.append(("end", stage))

    run_together(task, 4)
    # No copy starts a stage before every copy has finished the previous one.
    stages = [stage for kind, stage in events if kind == "start"]
    assert stages == sorted(stages) and len(stages) == 12
    for stage in (1, 2):
        first_start = events.index(("start", stage))
        assert events[:first_start].count(("end", stage - 1)) == 4


def test_the_failing_copys_error_is_raised_and_the_others_stop_waiting() -> None:
    calls: list[int] = []
    lock = threading.Lock()

    def task(sync: Callable[[], None]) -> None:
        with lock:
            calls.append(len(calls))
            mine = calls[-1]
        if mine == 1:
            raise RuntimeError("second copy failed")
        sync()  # would wait a minute for the copy that failed

    began = time.monotonic()
    with pytest.raises(RuntimeError, match="second copy failed"):
        run_together(task, 3)
    assert len(calls) == 3
    assert time.monotonic() - began < 5


def test_one_copy_runs_on_the_callers_thread_and_zero_is_refused() -> None:
    names: list[str] = []
    run_together(lambda sync: names.append(threading.current_thread().name), 1)
    assert names == [threading.current_thread().name]
    with pytest.raises(ValueError):
        run_together(lambda sync: None, 0)


def _rss_after_load(concurrency: int, cache: Path) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(concurrency), str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_warmed_for_the_workers_memory_does_not_step_up_when_they_all_run(
    tmp_path: Path,
) -> None:
    # The control: warmed for one call, four at once grow the arena by tens of MB. This is
    # what the warm-up exists for, and shows the check below can fail.
    single = _rss_after_load(1, tmp_path)
    grown = single["busy"] - single["ready"]
    assert grown > 40 * MB, f"single warm-up grew only {grown / MB:.1f} MB under 4 calls"
    warmed = _rss_after_load(4, tmp_path)
    step = warmed["busy"] - warmed["ready"]
    assert step < 10 * MB, (
        f"warmed for 4: RSS {warmed['ready'] / MB:.1f} -> {warmed['busy'] / MB:.1f} MB "
        f"(warmed for 1 grew {grown / MB:.1f} MB)"
    )
