"""``python -m scripts.cluster``: N firstword replicas behind nginx, on loopback.

    python -m scripts.cluster                      # 3 replicas, nginx on 127.0.0.1:8080
    python -m scripts.cluster --replicas 2 --port 0 -- --max-sessions 10
    python -m scripts.cluster --print-nginx-conf --listen 0.0.0.0:8080 \\
        --upstream 10.0.0.11:8765 --upstream 10.0.0.12:8765

It starts the replicas (``server.py`` on free loopback ports, ``--when-full
503``) and one nginx with ``deploy/nginx/nginx.conf.template`` rendered for
them, waits (bounded) until every replica is ready, prints the URL and runs
until Ctrl-C or SIGTERM. Stopping is orderly and bounded: nginx stops
accepting (SIGQUIT), the replicas drain (SIGTERM: in-flight utterances
finish, then 1001), nginx exits once its sessions are gone; anything still
running after the bound is killed. Children run in their own process group,
so the terminal's Ctrl-C reaches only this script, which stops them in that
order; they also get SIGTERM if this script dies.

nginx is Debian's (``apt-get install nginx``), run as an ordinary process with
its own prefix in the work directory (``scripts/nginx.py``); the replicas are
``scripts/processes.py``. ``tests/test_scaleout.py`` uses the same classes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from scripts.nginx import Nginx, find_nginx, render_nginx_conf
from scripts.processes import LOOPBACK, Replica, free_port, wait_or_kill


@dataclass
class Cluster:
    """Replicas plus the nginx in front of them. Use :meth:`start`; :meth:`stop` is idempotent."""

    workdir: Path
    replicas: list[Replica]
    nginx: Nginx
    stopped: bool = field(default=False)

    @classmethod
    def start(
        cls,
        workdir: Path,
        replicas: int,
        server_flags: Sequence[str] = (),
        *,
        nginx_port: int | None = None,
        nginx_binary: str | None = None,
        die_with_parent: bool = False,
        ready_timeout: float = 120.0,
    ) -> Cluster:
        """Start ``replicas`` replicas and nginx; return when all are ready (or raise, stopped)."""
        binary = find_nginx(nginx_binary)
        if binary is None:
            raise FileNotFoundError("nginx not found (Debian: apt-get install nginx)")
        workdir.mkdir(parents=True, exist_ok=True)
        flags = ("--when-full", "503", *server_flags)  # a later flag wins in argparse
        members = []
        for _ in range(replicas):
            port = free_port()
            log_path = workdir / f"replica-{port}.log"
            members.append(Replica(port, log_path, flags, die_with_parent))
        nginx = Nginx(
            binary, workdir / "nginx", nginx_port or free_port(), die_with_parent=die_with_parent
        )
        cluster = cls(workdir, members, nginx)
        try:
            for replica in members:
                replica.start()
            nginx.start([r.address for r in members])
            deadline = time.monotonic() + ready_timeout
            for replica in members:  # they load in parallel; wait for the slowest
                replica.wait_ready(deadline - time.monotonic())
        except BaseException:
            cluster.stop(timeout=10.0)
            raise
        return cluster

    @property
    def ws(self) -> str:
        return self.nginx.ws

    @property
    def http(self) -> str:
        return self.nginx.http

    def stop(self, timeout: float = 40.0) -> None:
        """Stop accepting (nginx), drain every replica at once, then nginx; all bounded."""
        if self.stopped:
            return
        self.stopped = True
        deadline = time.monotonic() + timeout
        self.nginx.quit()
        for replica in self.replicas:
            replica.terminate()
        for replica in self.replicas:
            if replica.process is not None:
                wait_or_kill(replica.process, deadline - time.monotonic())
        self.nginx.stop(timeout=max(1.0, deadline - time.monotonic()))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def describe(self) -> str:
        lines = [
            f"firstword cluster: {len(self.replicas)} replica(s) behind nginx",
            f"  url      {self.ws}",
            f"  page     {self.http}/",
        ]
        for r in self.replicas:
            pid = r.process.pid if r.process else "-"
            lines.append(f"  replica  {r.http}  pid {pid}  log {r.log_path}")
        pid = self.nginx.process.pid if self.nginx.process else "-"
        lines.append(f"  nginx    pid {pid}  config {self.nginx.conf_path}")
        lines.append(f"           access log {self.nginx.access_log_path}")
        lines.append("Ctrl-C stops it: nginx stops accepting, replicas drain, then all exit.")
        return "\n".join(lines)


class _Stop(Exception):
    """Raised in the main thread by SIGINT / SIGTERM."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.cluster",
        description="Run N firstword replicas behind nginx on 127.0.0.1 until Ctrl-C. "
        "Arguments after -- go to every server.py.",
    )
    parser.add_argument("--replicas", type=int, default=3, help="replicas to start (default 3)")
    parser.add_argument("--port", type=int, default=8080, help="nginx port; 0 picks a free one")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="engine workers per replica (default: cores / replicas, at least 1)",
    )
    parser.add_argument("--nginx", default=None, help="nginx binary (default: PATH, /usr/sbin)")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop by itself after this many seconds"
    )
    parser.add_argument("--dir", default=None, help="keep config and logs here (default: temp)")
    parser.add_argument(
        "--print-nginx-conf",
        action="store_true",
        help="print the nginx config for --listen and --upstream, start nothing",
    )
    parser.add_argument("--listen", default="0.0.0.0:8080", help="with --print-nginx-conf")
    parser.add_argument(
        "--upstream", action="append", default=[], help="replica HOST:PORT (repeat)"
    )
    parser.add_argument("server_flags", nargs=argparse.REMAINDER, help="-- then server.py flags")
    args = parser.parse_args(argv)
    if args.server_flags[:1] == ["--"]:
        args.server_flags = args.server_flags[1:]
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    return args


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = _say) -> int:
    args = parse_args(argv)
    if args.print_nginx_conf:
        out(render_nginx_conf(args.listen, args.upstream or [f"{LOOPBACK}:8765"]).rstrip("\n"))
        return 0
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.replicas)
    flags = ["--workers", str(workers), *args.server_flags]
    keep = args.dir is not None
    workdir = Path(args.dir) if keep else Path(tempfile.mkdtemp(prefix="firstword-cluster-"))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)
    cluster: Cluster | None = None
    code = 0
    try:
        cluster = Cluster.start(
            workdir,
            args.replicas,
            flags,
            nginx_port=args.port or None,
            nginx_binary=args.nginx,
            die_with_parent=True,
        )
        out(cluster.describe())
        code = _watch(cluster, out, args.duration)
    except _Stop as stop:
        out(f"{stop}: stopping")
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        out(f"error: {exc}")
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # the stop below is bounded; let it finish
        if cluster is not None:
            cluster.stop()
            out("stopped")
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


def _watch(cluster: Cluster, out: Callable[[str], None], duration: float | None) -> int:
    """Run until a signal (raises ``_Stop``) or ``duration`` s; report exits; 1 if nginx dies."""
    reported: set[int] = set()
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        if not cluster.nginx.alive:
            out(f"nginx exited:\n{cluster.nginx.error_log()[-2000:]}")
            return 1
        for replica in cluster.replicas:
            if not replica.alive and replica.port not in reported:
                reported.add(replica.port)
                out(f"replica {replica.address} exited; see {replica.log_path}")
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
