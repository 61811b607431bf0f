"""Server settings: command-line flags, each also read from ``FIRSTWORD_<FLAG>``.

A flag on the command line wins over the environment, which wins over the
default. ``python server.py --help`` lists them all.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    voice: str | None
    voices: str | None
    max_sessions: int
    when_full: str
    workers: int
    urgent_workers: int
    threads: int
    origins: tuple[str, ...]
    token: str | None
    grace: float
    flush_ms: float
    idle_timeout: float
    send_timeout: float
    max_message_bytes: int
    max_text_chars: int
    max_utterance_chars: int
    lookahead_ms: float
    rate_limit: float
    log_level: str


_FLAGS: list[tuple[str, type, object, str]] = [
    ("host", str, "127.0.0.1", "address to listen on"),
    ("port", int, 8765, "TCP port for HTTP and WebSocket"),
    ("voice", str, None, "a Piper .onnx voice to use as the default voice"),
    (
        "voices",
        str,
        None,
        "a folder of Piper voices (x.onnx + x.onnx.json) to load beside the default",
    ),
    ("max-sessions", int, 32, "open sessions at most; more are closed with 1013"),
    (
        "when-full",
        str,
        "1013",
        "over --max-sessions: '1013' accepts then closes with 1013;"
        " '503' refuses the handshake (a load balancer retries another replica)",
    ),
    ("workers", int, os.cpu_count() or 1, "engine worker threads (one per core is best)"),
    (
        "urgent-workers",
        int,
        2,
        "extra engine threads only for chunks a listener needs within 250 ms",
    ),
    ("threads", int, 1, "onnxruntime threads per engine call"),
    ("origins", str, "", "comma-separated allowed Origin values; empty allows any"),
    ("token", str, None, "require this token (query ?token= or start.token)"),
    ("grace", float, 20.0, "seconds in-flight utterances get to finish on SIGTERM"),
    ("flush-ms", float, 300.0, "speak buffered text after this long without new text"),
    ("idle-timeout", float, 300.0, "close a session idle this many seconds"),
    ("send-timeout", float, 15.0, "close a client that does not read for this many seconds"),
    ("max-message-bytes", int, 65536, "largest client message; larger closes with 1009"),
    ("max-text-chars", int, 10000, "characters in one text message at most"),
    ("max-utterance-chars", int, 100000, "characters in one utterance at most"),
    ("lookahead-ms", float, 4000.0, "audio a session may compute ahead of its playback"),
    ("rate-limit", float, 200.0, "client messages per second per session (burst: 2x)"),
    ("log-level", str, "INFO", "logging level"),
]


# (flag, lowest allowed, whether the lowest itself is allowed); none has an upper bound.
_RANGES: list[tuple[str, float, bool]] = [
    ("workers", 1, True),
    ("urgent-workers", 0, True),
    ("threads", 1, True),
    ("max-sessions", 1, True),
    ("grace", 0, True),
    ("flush-ms", 0, False),
    ("idle-timeout", 0, False),
    ("send-timeout", 0, False),
    ("max-message-bytes", 1, True),
    ("max-text-chars", 1, True),
    ("max-utterance-chars", 1, True),
    ("lookahead-ms", 0, False),
    ("rate-limit", 0, False),
]


def _range_problems(ns: argparse.Namespace) -> list[str]:
    """One message per flag outside its range (an empty list when all are fine)."""
    problems = []
    if not 0 <= ns.port <= 65535:
        problems.append(f"--port must be 0-65535, not {ns.port}")
    for flag, low, inclusive in _RANGES:
        value = getattr(ns, flag.replace("-", "_"))
        if value < low or (value == low and not inclusive) or not math.isfinite(value):
            bound = f">= {low}" if inclusive else f"> {low}"
            problems.append(f"--{flag} must be {bound}, not {value}")
    if ns.max_text_chars > ns.max_utterance_chars:
        problems.append("--max-text-chars must not exceed --max-utterance-chars")
    return problems


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def env_name(flag: str) -> str:
    return "FIRSTWORD_" + flag.upper().replace("-", "_")


def parse_config(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Config:
    """Parse flags over environment over defaults; exits with usage on bad input."""
    environ = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="server.py",
        description="firstword: real-time streaming TTS over WebSocket (protocol v1 at /v1/tts). "
        "Every flag can also be set as FIRSTWORD_<FLAG> in the environment.",
    )
    for flag, kind, default, help_text in _FLAGS:
        value = environ.get(env_name(flag), default)
        parser.add_argument(
            f"--{flag}",
            type=kind,
            default=value,  # argparse converts string defaults with `type` and reports errors
            help=f"{help_text} (env {env_name(flag)}, default {default})",
        )
    ns = parser.parse_args(argv)
    for problem in _range_problems(ns):
        parser.error(problem)  # exits 2 with the usage line and this message
    if ns.when_full not in ("1013", "503"):
        parser.error("--when-full must be 1013 or 503")
    if ns.log_level.upper() not in LOG_LEVELS:
        parser.error(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {ns.log_level}")
    origins = tuple(o.strip() for o in ns.origins.split(",") if o.strip())
    return Config(
        host=ns.host,
        port=ns.port,
        voice=ns.voice,
        voices=ns.voices,
        max_sessions=ns.max_sessions,
        when_full=ns.when_full,
        workers=ns.workers,
        urgent_workers=ns.urgent_workers,
        threads=ns.threads,
        origins=origins,
        token=ns.token or None,
        grace=ns.grace,
        flush_ms=ns.flush_ms,
        idle_timeout=ns.idle_timeout,
        send_timeout=ns.send_timeout,
        max_message_bytes=ns.max_message_bytes,
        max_text_chars=ns.max_text_chars,
        max_utterance_chars=ns.max_utterance_chars,
        lookahead_ms=ns.lookahead_ms,
        rate_limit=ns.rate_limit,
        log_level=ns.log_level.upper(),
    )
