"""nginx as a plain child process, configured from ``deploy/nginx/nginx.conf.template``.

Debian's nginx (``apt-get install nginx``) runs with its own prefix (config,
pid, logs, temp files) under a given directory: the system nginx service and
its paths are never touched. The config is checked with ``nginx -t`` before
the start.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scripts.processes import (
    LOOPBACK,
    POLL_S,
    ROOT,
    die_with_parent_signal,
    http_status,
    wait_or_kill,
)

TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf.template"
REPLICA_PLACEHOLDER = "${REPLICA}"
_PLACEHOLDER = re.compile(r"\$\{([A-Z_]+)\}")


def render_nginx_conf(listen: str, replicas: Sequence[str], template: str | None = None) -> str:
    """The nginx config for ``listen`` (``address:port``) in front of ``replicas``.

    Each non-comment line of the template holding ``${REPLICA}`` is repeated
    once per replica address; ``${LISTEN}`` is replaced. Comment lines are
    kept as they are. Raises ``ValueError`` for no replicas or a placeholder
    left unknown.
    """
    if not replicas:
        raise ValueError("at least one replica address is needed")
    text = TEMPLATE.read_text() if template is None else template
    out: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            out.append(line)
        elif REPLICA_PLACEHOLDER in line:
            out.extend(line.replace(REPLICA_PLACEHOLDER, address) for address in replicas)
        else:
            line = line.replace("${LISTEN}", listen)
            unknown = _PLACEHOLDER.search(line)
            if unknown:
                raise ValueError(f"unknown placeholder {unknown.group(0)} in: {line.strip()}")
            out.append(line)
    return "\n".join(out) + "\n"


def find_nginx(explicit: str | None = None) -> str | None:
    """Path of the nginx binary: ``explicit``, else on PATH, else Debian's /usr/sbin/nginx."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("nginx")
    if found:
        return found
    debian = "/usr/sbin/nginx"
    return debian if os.access(debian, os.X_OK) else None


@dataclass
class Nginx:
    """Debian's nginx run as a plain child process with its own prefix directory."""

    binary: str
    prefix: Path
    port: int
    die_with_parent: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def access_log_path(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log_path(self) -> Path:
        return self.prefix / "error.log"

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.prefix}/",
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log_path),  # not the compiled-in path, even before the config is read
            *extra,
        ]

    def start(self, replicas: Sequence[str], timeout: float = 15.0) -> None:
        """Write the config for ``replicas``, check it (``nginx -t``), start, wait for answers."""
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render_nginx_conf(f"{LOOPBACK}:{self.port}", replicas))
        check = subprocess.run(
            self._command("-t", "-q"), capture_output=True, text=True, timeout=30, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}{self.error_log()}")
        with (self.prefix / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                self._command("-g", "daemon off;"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=die_with_parent_signal if self.die_with_parent else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"nginx exited with {code}:\n{self.error_log()}")
            if http_status(f"{self.http}/lb-healthz") == 200:
                return
            time.sleep(POLL_S)
        raise TimeoutError(f"nginx not answering in {timeout} s:\n{self.error_log()}")

    @property
    def http(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}/v1/tts"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def quit(self) -> None:
        """SIGQUIT: graceful stop; the listener closes, open sessions go on until they end."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGQUIT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop; after ``timeout`` s a fast one (SIGTERM), then SIGKILL."""
        if self.process is None:
            return None
        self.quit()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            return wait_or_kill(self.process, 5.0)

    def access_log(self) -> str:
        path = self.access_log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def error_log(self) -> str:
        path = self.error_log_path
        return path.read_text(errors="replace") if path.exists() else ""
