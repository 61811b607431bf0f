"""Child processes for the local cluster: a replica (``server.py``) and process helpers.

A :class:`Replica` keeps its loopback port across restarts, so a balancer
configured for it finds it again; its log file is appended to, never
truncated. Every wait is bounded; a process that does not stop in time is
killed. Children run in their own process group (a terminal's Ctrl-C reaches
only the script that started them, which stops them in order) and, if asked,
get SIGTERM when that script dies (Linux ``PR_SET_PDEATHSIG``; only safe when
started from a thread that outlives them, such as the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
POLL_S = 0.05


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status of a GET to ``url``; ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return None


def rss_mib(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (VmRSS, Linux /proc); ``None`` if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def die_with_parent_signal() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait up to ``timeout`` s for ``process``; then SIGKILL it. Returns the exit code."""
    try:
        return process.wait(max(0.0, timeout))
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


@dataclass
class Replica:
    """One ``server.py`` process on a fixed loopback port; it can be stopped and started again."""

    port: int
    log_path: Path
    flags: tuple[str, ...] = ()
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None
    stopping: bool = False  # SIGTERM or SIGKILL sent since the last start

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def http(self) -> str:
        return f"http://{self.address}"

    @property
    def ws(self) -> str:
        return f"ws://{self.address}/v1/tts"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (returns at once; see :meth:`wait_ready`). Appends to the log."""
        if self.alive:
            raise RuntimeError(f"replica {self.address} is already running")
        self.stopping = False
        cmd = [sys.executable, str(ROOT / "server.py"), "--host", LOOPBACK]
        cmd += ["--port", str(self.port), *self.flags]
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,  # the terminal's Ctrl-C goes to the cluster script only
                preexec_fn=die_with_parent_signal if self.die_with_parent else None,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Return once /readyz answers 200; ``RuntimeError`` if the process exits, or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"replica {self.address} exited:\n{self.log()[-3000:]}")
            if http_status(self.http + "/readyz") == 200:
                return
            time.sleep(POLL_S)
        tail = self.log()[-3000:]
        raise TimeoutError(f"replica {self.address} not ready in {timeout} s:\n{tail}")

    def terminate(self) -> None:
        """SIGTERM: the replica drains (see server.py) and exits; does not wait."""
        if self.alive:
            assert self.process is not None
            self.stopping = True
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and reap: the replica vanishes without a drain."""
        if self.process is not None and self.process.poll() is None:
            self.stopping = True
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. ``None`` if never started."""
        if self.process is None:
            return None
        self.terminate()
        return wait_or_kill(self.process, timeout)

    def rss_mib(self) -> float | None:
        return rss_mib(self.process.pid) if self.alive and self.process is not None else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
