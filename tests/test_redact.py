"""service.redact: token values never reach a log line."""

from __future__ import annotations

import logging

import pytest

from service.redact import RedactTokens, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /v1/tts?token=s3cr3t HTTP/1.1", "GET /v1/tts?token=*** HTTP/1.1"),
        ("GET /v1/tts?voice=a&token=s3cr3t&x=1", "GET /v1/tts?voice=a&token=***&x=1"),
        (
            """< TEXT '{"type":"start","token":"s3cr3t"}' [33 bytes]""",
            """< TEXT '{"type":"start","token":"***"}' [33 bytes]""",
        ),
        (
            """< TEXT "{\\"type\\":\\"start\\",\\"token\\": \\"s3cr3t\\"}" """,
            """< TEXT "{\\"type\\":\\"start\\",\\"token\\": \\"***\\"}" """,
        ),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected
    assert "s3cr3t" not in redact(line)


def test_filter_rewrites_formatted_records() -> None:
    record = logging.LogRecord(
        "websockets", logging.DEBUG, __file__, 1, "< GET %s", ("/?token=abc",), None
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == "< GET /?token=***"
