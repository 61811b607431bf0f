"""Tests for protocol.messages: parsing at the edge never raises; encoding is plain JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.audio import ENCODINGS
from protocol import messages as m

MAX_CHARS = 100


def parse(frame: str | bytes) -> m.ClientMessage | m.ProtocolError:
    return m.parse_client_message(frame, max_text_chars=MAX_CHARS)


def start(**fields: Any) -> str:
    return json.dumps({"type": "start", **fields})


# (frame, expected error code). Every entry must give exactly this code.
BAD_INPUTS: list[tuple[str | bytes, str]] = [
    # not JSON at all
    ("", "bad_json"),
    ("   ", "bad_json"),
    ("{", "bad_json"),
    ("{'type': 'text'}", "bad_json"),
    ('{"type": "text",}', "bad_json"),
    ("hello", "bad_json"),
    ('{"type":"text","text":"a"} trailing', "bad_json"),
    ("[" * 100_000 + "]" * 100_000, "bad_json"),  # deeper than the recursion limit
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "bad_json"),
    # JSON, but not an object with a string type
    ("[]", "bad_message"),
    ('["text"]', "bad_message"),
    ("1", "bad_message"),
    ('"text"', "bad_message"),
    ("null", "bad_message"),
    ("true", "bad_message"),
    ("NaN", "bad_message"),
    ("{}", "bad_message"),
    ('{"text":"hi"}', "bad_message"),
    ('{"type":null}', "bad_message"),
    ('{"type":1}', "bad_message"),
    ('{"type":true}', "bad_message"),
    ('{"type":["text"]}', "bad_message"),
    ('{"type":{"name":"text"}}', "bad_message"),
    # unknown type
    ('{"type":""}', "unknown_type"),
    ('{"type":"TEXT"}', "unknown_type"),
    ('{"type":"speak"}', "unknown_type"),
    ('{"type":" text"}', "unknown_type"),
    (json.dumps({"type": "x" * 10_000}), "unknown_type"),
    # text: wrong field types, lone surrogates
    ('{"type":"text"}', "bad_field"),
    ('{"type":"text","text":null}', "bad_field"),
    ('{"type":"text","text":1}', "bad_field"),
    ('{"type":"text","text":["a"]}', "bad_field"),
    ('{"type":"text","text":{"a":1}}', "bad_field"),
    ('{"type":"text","text":true}', "bad_field"),
    ('{"type":"text","text":"\\ud800"}', "bad_field"),
    ('{"type":"text","text":"ok \\udfff ok"}', "bad_field"),
    ('{"type":"text","text":"\ud800"}', "bad_field"),  # a raw lone surrogate in the frame
    # text: over-long
    (json.dumps({"type": "text", "text": "a" * (MAX_CHARS + 1)}), "text_too_long"),
    (json.dumps({"type": "text", "text": "é" * 10_000}), "text_too_long"),
    # start: voice / format / token types
    (start(voice=1), "bad_field"),
    (start(voice=["v"]), "bad_field"),
    (start(voice=True), "bad_field"),
    (start(format="wav"), "bad_field"),
    (start(format="PCM_S16LE"), "bad_field"),
    (start(format=1), "bad_field"),
    (start(format=["mulaw"]), "bad_field"),
    (start(format={"x": 1}), "bad_field"),
    (start(format=""), "bad_field"),
    (start(token=123), "bad_field"),
    (start(token=["t"]), "bad_field"),
    # start: sample_rate / frame_ms out of range or not integers
    (start(sample_rate=7999), "bad_field"),
    (start(sample_rate=48001), "bad_field"),
    (start(sample_rate=0), "bad_field"),
    (start(sample_rate=-16000), "bad_field"),
    (start(sample_rate=16000.0), "bad_field"),
    (start(sample_rate=16000.5), "bad_field"),
    (start(sample_rate="16000"), "bad_field"),
    (start(sample_rate=True), "bad_field"),
    ('{"type":"start","sample_rate":NaN}', "bad_field"),
    ('{"type":"start","sample_rate":Infinity}', "bad_field"),
    ('{"type":"start","sample_rate":1e400}', "bad_field"),
    ('{"type":"start","sample_rate":' + "9" * 400 + "}", "bad_field"),
    (start(frame_ms=9), "bad_field"),
    (start(frame_ms=201), "bad_field"),
    (start(frame_ms=20.0), "bad_field"),
    (start(frame_ms="20"), "bad_field"),
    (start(frame_ms=False), "bad_field"),
    (start(frame_ms=[20]), "bad_field"),
    # start: speed
    (start(speed=0.49), "bad_field"),
    (start(speed=2.01), "bad_field"),
    (start(speed=0), "bad_field"),
    (start(speed=-1), "bad_field"),
    (start(speed=3), "bad_field"),
    (start(speed="1.0"), "bad_field"),
    (start(speed=True), "bad_field"),
    (start(speed=[1.0]), "bad_field"),
    ('{"type":"start","speed":NaN}', "bad_field"),
    ('{"type":"start","speed":Infinity}', "bad_field"),
    ('{"type":"start","speed":-Infinity}', "bad_field"),
    ('{"type":"start","speed":1e400}', "bad_field"),
    # binary frames are never accepted, whatever they hold
    (b"", "binary_not_allowed"),
    (b'{"type":"text","text":"hi"}', "binary_not_allowed"),
    (b"\x00\xff\xfe", "binary_not_allowed"),
]


def test_corpus_is_large_enough() -> None:
    assert len(BAD_INPUTS) >= 40
    assert {code for _, code in BAD_INPUTS} <= set(m.ERROR_CODES)


@pytest.mark.parametrize(
    ("frame", "code"),
    BAD_INPUTS,
    ids=[f"{i}-{code}" for i, (_, code) in enumerate(BAD_INPUTS)],
)
def test_bad_input_gives_stable_error_code(frame: str | bytes, code: str) -> None:
    result = parse(frame)
    assert isinstance(result, m.ProtocolError)
    assert result.code == code
    assert result.message  # a human-readable explanation is always there


def test_integer_literal_over_digit_limit_is_bad_json_not_exception() -> None:
    # Python limits int parsing to 4300 digits; json.loads raises a plain ValueError.
    # 5000 digits fit easily within a 64 KiB message.
    frame = '{"type":"start","frame_ms":' + "1" * 5000 + "}"
    result = parse(frame)
    assert isinstance(result, m.ProtocolError)
    assert result.code in ("bad_json", "bad_field")


def test_huge_integer_speed_is_bad_field_not_exception() -> None:
    result = parse('{"type":"start","speed":' + "9" * 400 + "}")
    assert isinstance(result, m.ProtocolError)
    assert result.code == "bad_field"


# ------------------------------------------------------------------ valid input
@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"text","text":"Hello there."}', m.Text("Hello there.")),
        ('{"type":"text","text":" a token"}', m.Text(" a token")),
        ('{"type":"text","text":""}', m.Text("")),  # the session rejects it, not the parser
        ('{"type":"text","text":"\\u00e9t\\u00e9 \\ud83d\\ude00"}', m.Text("été 😀")),
        ('{"type":"text","text":"a\\u0000b\\u0007c\\u007fd"}', m.Text("a b c d")),
        ('{"type":"text","text":"line\\nnext\\ttab\\r"}', m.Text("line\nnext\ttab\r")),
        (json.dumps({"type": "text", "text": "a" * MAX_CHARS}), m.Text("a" * MAX_CHARS)),
        ('{"type":"text","text":"hi","extra":1}', m.Text("hi")),
        ('{"type":"flush"}', m.Flush()),
        ('{"type":"end"}', m.End()),
        ('{"type":"cancel"}', m.Cancel()),
        ('{"type":"cancel","reason":"barge-in"}', m.Cancel()),
        ('{"type":"start"}', m.Start()),
        (
            start(
                voice="v",
                format="mulaw",
                sample_rate=8000,
                frame_ms=20,
                speed=1.5,
                token="secret",
            ),
            m.Start("v", "mulaw", 8000, 20, 1.5, "secret"),
        ),
        (start(sample_rate=48000, frame_ms=200), m.Start(sample_rate=48000, frame_ms=200)),
        (start(sample_rate=8000, frame_ms=10), m.Start(sample_rate=8000, frame_ms=10)),
        (start(speed=0.5), m.Start(speed=0.5)),
        (start(speed=2), m.Start(speed=2.0)),
        (start(voice=None, format=None), m.Start()),
    ],
)
def test_valid_messages_parse_to_dataclasses(frame: str, expected: m.ClientMessage) -> None:
    result = parse(frame)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("fmt", ENCODINGS)
def test_every_wire_format_is_accepted(fmt: str) -> None:
    result = parse(start(format=fmt))
    assert isinstance(result, m.Start)
    assert result.format == fmt


def test_integer_speed_becomes_float() -> None:
    result = parse(start(speed=1))
    assert isinstance(result, m.Start)
    assert isinstance(result.speed, float)
    assert result.speed == 1.0


def test_control_characters_are_replaced_keeping_length() -> None:
    raw = "".join(chr(c) for c in range(0, 160))
    result = m.parse_client_message(json.dumps({"type": "text", "text": raw}), max_text_chars=500)
    assert isinstance(result, m.Text)
    assert len(result.text) == len(raw)
    assert all(c in "\t\n\r " or 32 <= ord(c) < 127 for c in result.text)


# ------------------------------------------------------------------ never raises
@given(st.text(max_size=300))
def test_arbitrary_text_never_raises(frame: str) -> None:
    result = parse(frame)
    assert isinstance(result, (m.ProtocolError, m.Start, m.Text, m.Flush, m.End, m.Cancel))
    if isinstance(result, m.ProtocolError):
        assert result.code in m.ERROR_CODES


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_binary_not_allowed(frame: bytes) -> None:
    result = parse(frame)
    assert isinstance(result, m.ProtocolError)
    assert result.code == "binary_not_allowed"


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["type", "text", "voice", "format", "sample_rate", "frame_ms", "speed", "token", "x"]
)
_types = st.sampled_from(["start", "text", "flush", "end", "cancel", "other"]) | _json_values


@given(
    kind=_types,
    fields=st.dictionaries(_keys, _json_values | st.sampled_from(ENCODINGS), max_size=6),
)
def test_arbitrary_message_objects_never_raise(kind: Any, fields: dict[str, Any]) -> None:
    frame = json.dumps({**fields, "type": kind})
    result = parse(frame)
    if isinstance(result, m.ProtocolError):
        assert result.code in m.ERROR_CODES
    elif isinstance(result, m.Start):
        # whatever got through is within range
        assert result.sample_rate is None or m.MIN_RATE <= result.sample_rate <= m.MAX_RATE
        assert result.frame_ms is None or m.MIN_FRAME_MS <= result.frame_ms <= m.MAX_FRAME_MS
        assert result.speed is None or m.MIN_SPEED <= result.speed <= m.MAX_SPEED
        assert result.format is None or result.format in ENCODINGS
    elif isinstance(result, m.Text):
        assert len(result.text) <= MAX_CHARS
        result.text.encode("utf-8")  # valid Unicode


# ---------------------------------------------------------------------- encode
def test_encode_ready() -> None:
    wire = m.encode(m.ready_message("s1", "v", "mulaw", 8000, 20, 1.0))
    assert json.loads(wire) == {
        "type": "ready",
        "session_id": "s1",
        "voice": "v",
        "format": "mulaw",
        "sample_rate": 8000,
        "frame_ms": 20,
        "speed": 1.0,
        "realtime": True,
        "channels": 1,
    }


@pytest.mark.parametrize("value", [0, 1, "false", [], {}])
def test_realtime_must_be_a_boolean(value: object) -> None:
    parsed = m.parse_client_message(
        json.dumps({"type": "start", "realtime": value}), max_text_chars=100
    )
    assert isinstance(parsed, m.ProtocolError) and parsed.code == "bad_field"
    assert "'realtime'" in parsed.message


def test_realtime_false_is_parsed() -> None:
    parsed = m.parse_client_message('{"type": "start", "realtime": false}', max_text_chars=100)
    assert parsed == m.Start(realtime=False)


def test_encode_segment_rounds_offset_and_keeps_non_ascii() -> None:
    wire = m.encode(m.segment_message(2, "Grüße, 世界.", 1234.5678))
    assert "Grüße, 世界." in wire  # not \u-escaped
    assert " " not in wire.replace("Grüße, 世界.", "")  # compact separators
    assert json.loads(wire) == {
        "type": "segment",
        "index": 2,
        "text": "Grüße, 世界.",
        "audio_offset_ms": 1234.6,
    }


def test_encode_error_done_cancelled() -> None:
    error = json.loads(m.encode(m.error_message(m.ProtocolError("bad_state", "not now"))))
    assert error == {"type": "error", "code": "bad_state", "message": "not now"}
    done = json.loads(m.encode(m.done_message({"ttft_ms": 41.8, "segments": 2})))
    assert done == {"type": "done", "metrics": {"ttft_ms": 41.8, "segments": 2}}
    cancelled = json.loads(m.encode(m.cancelled_message(1260.04, "Spoken.", "Not spoken.")))
    assert cancelled == {
        "type": "cancelled",
        "audio_sent_ms": 1260.0,
        "spoken_text": "Spoken.",
        "unspoken_text": "Not spoken.",
    }
