"""Small helpers shared by the on-disk caches and the preload timers."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(
    cache_dir: Path, entry: Path, fill: Callable[[Path], None], prefix: str
) -> None:
    """Create the folder ``entry`` by filling a temp folder and renaming it into place.

    ``fill`` writes the entry's files into the folder it is given. A crash
    mid-write leaves only a ``prefix*`` temp folder, never a half entry that a
    later start would trust; an older ``entry`` is replaced.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=cache_dir))
    try:
        fill(tmp)
        if entry.exists():
            shutil.rmtree(entry)
        tmp.rename(entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, its duration recorded in ``timings[name]`` (seconds)."""
    start = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - start
    return result
