"""Tests for service.config: flags over environment over defaults."""

from __future__ import annotations

import os

import pytest

from service.config import Config, env_name, parse_config


def test_defaults() -> None:
    c = parse_config([], env={})
    assert isinstance(c, Config)
    assert (c.host, c.port) == ("127.0.0.1", 8765)
    assert c.voice is None
    assert c.voices is None
    assert c.max_sessions == 32
    assert c.workers == (os.cpu_count() or 1)
    assert c.threads == 1
    assert c.origins == ()
    assert c.token is None
    assert c.grace == 20.0
    assert c.flush_ms == 300.0
    assert c.idle_timeout == 300.0
    assert c.send_timeout == 15.0
    assert c.max_message_bytes == 65536
    assert c.max_text_chars == 10000
    assert c.max_utterance_chars == 100000
    assert c.lookahead_ms == 4000.0
    assert c.rate_limit == 200.0
    assert c.log_level == "INFO"
    assert c.urgent_workers == 2


def test_each_range_error_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(["--lookahead-ms", "-100"], env={})
    assert "--lookahead-ms must be > 0, not -100.0" in capsys.readouterr().err


def test_env_names() -> None:
    assert env_name("port") == "FIRSTWORD_PORT"
    assert env_name("max-text-chars") == "FIRSTWORD_MAX_TEXT_CHARS"


def test_environment_overrides_defaults() -> None:
    c = parse_config(
        [],
        env={
            "FIRSTWORD_PORT": "9000",
            "FIRSTWORD_HOST": "0.0.0.0",
            "FIRSTWORD_WORKERS": "3",
            "FIRSTWORD_FLUSH_MS": "150.5",
            "FIRSTWORD_MAX_TEXT_CHARS": "42",
            "FIRSTWORD_TOKEN": "s3cret",
            "FIRSTWORD_ORIGINS": "https://a.example,https://b.example",
            "FIRSTWORD_LOG_LEVEL": "debug",
            "UNRELATED": "x",
        },
    )
    assert c.port == 9000
    assert c.host == "0.0.0.0"
    assert c.workers == 3
    assert c.flush_ms == 150.5
    assert c.max_text_chars == 42
    assert c.token == "s3cret"
    assert c.origins == ("https://a.example", "https://b.example")
    assert c.log_level == "DEBUG"


def test_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIRSTWORD_PORT", "9100")
    assert parse_config([]).port == 9100


def test_flag_overrides_environment() -> None:
    env = {"FIRSTWORD_PORT": "9000", "FIRSTWORD_WORKERS": "3", "FIRSTWORD_TOKEN": "env"}
    c = parse_config(["--port", "9999", "--workers", "5", "--token", "flag"], env=env)
    assert (c.port, c.workers, c.token) == (9999, 5, "flag")
    assert parse_config([], env=env).port == 9000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("https://a.example", ("https://a.example",)),
        (
            " https://a.example , http://b.example:8080 ,",
            ("https://a.example", "http://b.example:8080"),
        ),
        (",,, ,", ()),
    ],
)
def test_origins_parsing(value: str, expected: tuple[str, ...]) -> None:
    assert parse_config(["--origins", value], env={}).origins == expected


def test_empty_token_means_no_token() -> None:
    assert parse_config(["--token", ""], env={}).token is None
    assert parse_config([], env={"FIRSTWORD_TOKEN": ""}).token is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "0"],
        ["--workers", "-1"],
        ["--threads", "0"],
        ["--max-sessions", "0"],
        ["--port", "abc"],
        ["--workers", "1.5"],
        ["--flush-ms", "soon"],
        ["--no-such-flag"],
        ["--port", "99999"],
        ["--port", "-1"],
        ["--flush-ms", "-1"],
        ["--flush-ms", "0"],
        ["--max-text-chars", "0"],
        ["--lookahead-ms", "-100"],
        ["--rate-limit", "0"],
        ["--urgent-workers", "-1"],
        ["--grace", "nan"],
        ["--send-timeout", "inf"],
        ["--max-text-chars", "200", "--max-utterance-chars", "100"],
        ["--log-level", "chatty"],
    ],
)
def test_invalid_flags_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv, env={})
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_invalid_workers_from_environment_exits() -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={"FIRSTWORD_WORKERS": "0"})


def test_valid_flag_rescues_invalid_environment() -> None:
    assert parse_config(["--workers", "2"], env={"FIRSTWORD_WORKERS": "0"}).workers == 2


def test_unparsable_environment_value_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        parse_config([], env={"FIRSTWORD_PORT": "abc"})


def test_log_level_is_case_insensitive() -> None:
    assert parse_config(["--log-level", "debug"], env={}).log_level == "DEBUG"
