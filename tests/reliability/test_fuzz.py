"""Fuzzing: arbitrary frames through the parser, the session state machine and the server.

- ``test_parser_*``: any frame (text, bytes, JSON of any shape) gives a message
  or an error value; what it gives is valid and can be sent back as UTF-8.
- ``SessionMachine`` (hypothesis stateful): raw frames -> ``parse_client_message``
  -> ``Session``, interleaved with engine steps (deliver, finish, fail), sends,
  clock ticks and idle-flush deadlines. After every step: no exception; every
  accepted character of text is in a released segment or still buffered; on
  the wire, no frame of an utterance follows its ``done`` or ``cancelled``,
  and when an utterance ends every accepted character (whitespace aside) was
  announced in a ``segment``, reported by ``synthesis_failed``, or returned in
  ``cancelled``.
- ``test_random_frames_*``: a bounded, seeded stream of random frames over one
  real connection; the server answers them all, then a normal utterance works.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
from conftest import RunningServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from rhelpers import SHORT
from websockets.asyncio.client import connect
from wsclient import Collected, check_utterance, collect, send_json

from engine.audio import ENCODINGS
from protocol import messages as m
from protocol.session import Limits, SegmentJob, SendDone, SendFrame, SendJson, Session, Utterance

pytestmark = pytest.mark.timeout(120)

VOICES = {"v": 22050, "w": 16000}
TOKEN = "tok"
MAX_TEXT_CHARS = 60
SERVER_TYPES = {"ready", "segment", "done", "cancelled", "error"}


def nows(text: str) -> Counter[str]:
    """The characters of ``text`` other than whitespace, as a multiset."""
    return Counter("".join(text.split()))


# ---------------------------------------------------------------- strategies
any_char = st.one_of(st.characters(), st.characters(categories=["Cs", "Cc"]))
any_text = st.text(any_char, max_size=40)
speech = st.sampled_from(
    [
        *("Hello", " there", ", friend", ". ", "How are you? ", "Fine", "!", "\n\n", "   "),
        *("Dr. Who", " ok.", "x" * 30, " and then", "…", "。", "a", "One. Two. Three. "),
        *("\x00\x07", "\u200b", "\u2028", "😀", "\t", " \x85 "),
    ]
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    json_scalar,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
    max_leaves=12,
)
start_fields = st.fixed_dictionaries(
    {},
    optional={
        "voice": st.sampled_from(["v", "w", "nobody", "", 5, None, "\ud800"]),
        "format": st.sampled_from([*ENCODINGS, "mp3", 3, None]),
        "sample_rate": st.sampled_from([8000, 16000, 22050, 48000, 7999, 0, 1.5, "8000", True]),
        "frame_ms": st.sampled_from([10, 20, 200, 9, 201, None, "20"]),
        "speed": st.one_of(st.floats(0.4, 2.1), st.sampled_from([1, True, "1"])),
        "token": st.sampled_from([TOKEN, "wrong", "", 7, "\udc00", None]),
    },
)
valid_ish = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, speech),
    st.builds(lambda t: {"type": "text", "text": t}, any_text),
    start_fields.map(lambda f: {"type": "start", **f}),
    st.sampled_from([{"type": "flush"}, {"type": "end"}, {"type": "cancel"}]),
    st.builds(lambda k, v: {"type": k, **v}, any_text, st.dictionaries(any_text, json_scalar)),
)
frames = st.one_of(
    valid_ish.map(json.dumps),  # ASCII: lone surrogates become "\ud800" escapes
    valid_ish.map(json.dumps),
    valid_ish.map(json.dumps),
    valid_ish.map(lambda v: json.dumps(v, ensure_ascii=False)),  # raw lone surrogates
    json_value.map(json.dumps),
    any_text,
    st.binary(max_size=40),
)


# -------------------------------------------------------------------- parser
def check_parsed(result: m.ClientMessage | m.ProtocolError) -> None:
    """What the parser lets through is valid; what it refuses can be sent back."""
    if isinstance(result, m.ProtocolError):
        assert result.code in m.ERROR_CODES
        m.encode(m.error_message(result)).encode("utf-8")  # must not raise
        return
    if isinstance(result, m.Text):
        assert len(result.text) <= MAX_TEXT_CHARS
        result.text.encode("utf-8")
        assert all(ord(c) >= 32 or c in "\t\n\r" for c in result.text)
        assert not any(127 <= ord(c) < 160 for c in result.text)
    if isinstance(result, m.Start):
        for name in ("voice", "token"):
            value = getattr(result, name)
            assert value is None or isinstance(value, str)
            if value is not None:
                value.encode("utf-8")
        assert result.format is None or result.format in ENCODINGS
        assert result.sample_rate is None or m.MIN_RATE <= result.sample_rate <= m.MAX_RATE
        assert result.frame_ms is None or m.MIN_FRAME_MS <= result.frame_ms <= m.MAX_FRAME_MS
        assert result.speed is None or m.MIN_SPEED <= result.speed <= m.MAX_SPEED


@settings(max_examples=400, deadline=None)
@given(frame=frames)
def test_parser_never_raises_and_passes_only_valid_messages(frame: str | bytes) -> None:
    check_parsed(m.parse_client_message(frame, max_text_chars=MAX_TEXT_CHARS))


# ---------------------------------------------------------- the state machine
class SessionMachine(RuleBasedStateMachine):
    """The server adapter (``server._Link``) without sockets, threads or clock."""

    def __init__(self) -> None:
        super().__init__()
        self.s = Session("fuzz", VOICES, "v")
        self.now = 0.0
        self.job: SegmentJob | None = None
        self.closed = False  # the session asked to close (unauthorized): the adapter stops
        self.needs_token = False
        self.broken = False
        self.accepted: dict[int, list[str]] = {}  # id(utterance) -> accepted texts
        self.keep: list[Utterance] = []  # keeps ids unique while the machine runs
        self.finished: set[int] = set()
        self.reported: list[str] = []  # segment texts and failed text since the last final
        self.ready_seen = False
        self.frame_size: dict[int, int] = {}
        self.sent_ms: defaultdict[int, float] = defaultdict(float)  # audio on the wire
        self.heard: dict[int, set[int]] = {}  # segments with a frame on the wire
        self.announced: dict[int, list[str]] = {}  # texts of segment messages on the wire

    @initialize(
        token=st.sampled_from([None, TOKEN]),
        url_token=st.booleans(),
        max_utterance=st.sampled_from([80, 150, 100_000]),
    )
    def open_session(self, token: str | None, url_token: bool, max_utterance: int) -> None:
        limits = Limits(
            max_text_chars=MAX_TEXT_CHARS, max_utterance_chars=max_utterance, flush_after_s=0.3
        )
        self.s = Session("fuzz", VOICES, "v", limits=limits, token=token, authenticated=url_token)
        self.needs_token = token is not None and not url_token

    # -------------------------------------------------------------- client
    @precondition(lambda self: not self.closed)
    @rule(frame=frames)
    def client_frame(self, frame: str | bytes) -> None:
        msg = m.parse_client_message(frame, max_text_chars=MAX_TEXT_CHARS)
        check_parsed(msg)
        before = len(self.s.outbound)
        self.s.receive(msg, self.now)
        if isinstance(msg, m.Text):
            new = list(self.s.outbound)[before:]
            refused = any(isinstance(i, SendJson) and i.message["type"] == "error" for i in new)
            u = self.s.utterance
            if not refused:
                assert u is not None
                if id(u) not in self.accepted:
                    self.keep.append(u)
                self.accepted.setdefault(id(u), []).append(msg.text)
        if self.s.close_request is not None:
            assert self.s.close_request == (1008, "unauthorized")
            self.closed = True

    # Well-formed frames too, so that utterances get far (they still go through the parser).
    @precondition(lambda self: not self.closed)
    @rule(text=speech)
    def speak(self, text: str) -> None:
        self.client_frame(json.dumps({"type": "text", "text": text}))

    @precondition(lambda self: not self.closed)
    @rule(kind=st.sampled_from(["flush", "end", "cancel"]))
    def control(self, kind: str) -> None:
        self.client_frame(json.dumps({"type": kind}))

    @precondition(lambda self: not self.closed and self.needs_token)
    @rule(token=st.sampled_from([TOKEN, "wrong", "\udc00", None]), ascii=st.booleans())
    def start_with_token(self, token: str | None, ascii: bool) -> None:
        self.client_frame(json.dumps({"type": "start", "token": token}, ensure_ascii=ascii))
        self.needs_token = not self.closed and token != TOKEN  # "\udc00" is bad_field

    @precondition(lambda self: not self.closed)
    @rule(dt=st.floats(0.0, 0.5))
    def tick(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: not self.closed)
    @rule()
    def flush_deadline(self) -> None:
        self.s.on_flush_deadline(self.now)

    # -------------------------------------------------------------- engine
    def _job(self) -> SegmentJob | None:
        """The job in progress; it may have been cancelled while its chunk was computing."""
        if self.job is None:
            self.job = self.s.next_job()
        return self.job

    def _after_engine_step(self) -> None:
        if self.job is not None and not self.s.job_live(self.job):
            self.job = None  # the adapter stops working on a cancelled utterance

    @precondition(lambda self: not self.closed)
    @rule(samples=st.integers(0, 3000), value=st.floats(-1.0, 1.0))
    def engine_delivers(self, samples: int, value: float) -> None:
        job = self._job()
        if job is not None:
            self.s.deliver_audio(job, np.full(samples, value, dtype=np.float32), 0.001)
        self._after_engine_step()

    @precondition(lambda self: not self.closed)
    @rule(samples=st.integers(1, 3000))
    def engine_speaks_a_segment(self, samples: int) -> None:
        """A whole segment in one step (deliver, then finish): utterances get further."""
        job = self._job()
        if job is not None:
            self.s.deliver_audio(job, np.full(samples, 0.5, dtype=np.float32), 0.001)
            self.s.finish_job(job, 0.001)
            self.job = None

    @precondition(lambda self: not self.closed)
    @rule()
    def engine_finishes(self) -> None:
        job = self._job()
        if job is not None:
            self.s.finish_job(job, 0.001)
            self.job = None

    @precondition(lambda self: not self.closed)
    @rule()
    def engine_fails(self) -> None:
        job = self._job()
        if job is not None:
            self.s.fail_job(job, "synthesis failed: fuzz")
            self.job = None

    # ---------------------------------------------------------------- wire
    @rule(count=st.integers(1, 40))
    def send(self, count: int) -> None:
        for _ in range(count):
            item = self.s.pop_outbound()
            if item is None:
                return
            try:
                self._on_wire(item)
            except AssertionError:
                self.broken = True  # teardown must not add a second, derived failure
                raise

    def _on_wire(self, item: SendJson | SendFrame | SendDone) -> None:
        if isinstance(item, SendFrame):
            uid = id(item.utterance)
            assert uid not in self.finished, "a frame after its utterance's done or cancelled"
            assert self.ready_seen, "audio before ready"
            size = self.frame_size.setdefault(uid, len(item.frame.data))
            assert len(item.frame.data) == size, "frames of one utterance differ in size"
            self.sent_ms[uid] += item.frame.duration_ms
            self.heard.setdefault(uid, set()).add(item.segment)
            self.s.frame_sent(item, self.now)
            return
        if isinstance(item, SendDone):
            message = self.s.render_done(item)
            uid = id(item.utterance)
            missing = nows("".join(self.accepted.get(uid, []))) - nows("".join(self.reported))
            assert not missing, f"accepted text neither spoken nor reported: {missing}"
            self.finished.add(uid)
            self.reported = []
        else:
            message = item.message
        m.encode(message).encode("utf-8")  # the server can always send it
        kind = message["type"]
        assert kind in SERVER_TYPES
        if kind == "ready":
            self.ready_seen = True
        elif kind == "segment":
            assert item.utterance is not None and id(item.utterance) not in self.finished
            self.reported.append(message["text"])
            self.announced.setdefault(id(item.utterance), []).append(message["text"])
        elif kind == "error":
            assert message["code"] in m.ERROR_CODES
            if message["code"] == "synthesis_failed":
                self.reported.append(message["unspoken_text"])
        elif kind == "cancelled":
            if item.utterance is None:
                assert message == m.cancelled_message(0.0, "", "")
            else:
                uid = id(item.utterance)
                said = nows(message["spoken_text"] + message["unspoken_text"])
                assert said == nows("".join(self.accepted.get(uid, [])))
                # spoken: exactly the segments of which a frame went out (faded one included)
                heard = sorted(self.heard.get(uid, set()))
                spoken = "".join(item.utterance.segments[i] for i in heard)
                assert nows(message["spoken_text"]) == nows(spoken)
                # ... and each of them was announced: a segment that failed before any
                # of its audio (synthesis_failed) was not spoken
                announced = nows("".join(self.announced.get(uid, [])))
                assert not nows(message["spoken_text"]) - announced, "spoken, never announced"
                assert abs(message["audio_sent_ms"] - self.sent_ms[uid]) <= 0.051
                self.finished.add(uid)
            self.reported = []

    # ----------------------------------------------------------- invariants
    @invariant()
    def accepted_text_is_released_or_buffered(self) -> None:
        u = self.s.utterance
        if u is not None:
            held = nows("".join(u.segments) + u.splitter.pending)
            assert held == nows("".join(self.accepted.get(id(u), [])))
            assert u.chars <= self.s.limits.max_utterance_chars

    @invariant()
    def no_utterance_vanishes(self) -> None:
        """An accepted utterance is current, finished on the wire, or has its final queued."""
        queued = {
            id(i.utterance)
            for i in self.s.outbound
            if isinstance(i, SendDone)
            or (isinstance(i, SendJson) and i.message["type"] == "cancelled" and i.utterance)
        }
        current = id(self.s.utterance) if self.s.utterance is not None else None
        for uid in self.accepted:
            assert uid in self.finished or uid in queued or uid == current

    def teardown(self) -> None:
        """Wind down like a client that ends its utterance and reads everything."""
        if self.closed or self.broken:
            return
        for _ in range(1000):  # bounded: each pass finishes a job or sends items
            u = self.s.utterance
            if u is not None and not u.ended:
                self.s.receive(m.End(), self.now)
            job = self._job()
            if job is not None:
                self.s.deliver_audio(job, np.full(500, 0.25, dtype=np.float32), 0.001)
                self.s.finish_job(job, 0.001)
                self.job = None
            self.send(40)
            if self.s.utterance is None and not self.s.outbound:
                break
        assert self.s.utterance is None and not self.s.outbound
        assert set(self.accepted) <= self.finished, "an utterance never ended"


SessionMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSessionMachine = SessionMachine.TestCase


# ----------------------------------------------------------- over the network
WORDS = ["Hello", "there", "friend", "Yes", "no", "maybe", "Dr.", "ok", "€", "漢字", "😀"]
PUNCT = [".", ",", "?", "!", " ", "\n", "…", "; "]


def random_frame(rng: random.Random) -> str | bytes:
    """One random client frame: mostly plausible messages, some garbage. Never invalid UTF-8."""
    roll = rng.random()
    if roll < 0.35:
        words = rng.choices(WORDS, k=rng.randint(1, 4))
        text = " ".join(words) + rng.choice(PUNCT) * rng.randint(0, 2)
        return json.dumps({"type": "text", "text": text}, ensure_ascii=rng.random() < 0.5)
    if roll < 0.55:
        return json.dumps({"type": rng.choice(["flush", "end", "end", "cancel"])})
    if roll < 0.65:
        fields: dict[str, Any] = {}
        if rng.random() < 0.5:
            fields["format"] = rng.choice([*ENCODINGS, "wav"])
        if rng.random() < 0.5:
            fields["sample_rate"] = rng.choice([8000, 16000, 22050, 44100, 48000, 5])
        if rng.random() < 0.5:
            fields["frame_ms"] = rng.choice([10, 20, 60, 200, 500])
        if rng.random() < 0.5:
            fields["speed"] = rng.choice([0.5, 1.0, 1.7, 2.0, 9.0])
        return json.dumps({"type": "start", **fields})
    if roll < 0.75:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
    if roll < 0.85:
        return "".join(
            chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0xD7FF)])) for _ in range(20)
        )
    value: Any = rng.choice([None, 1, [1, {"type": 2}], {"type": "text", "text": 3}, "x"])
    return json.dumps(value)


async def test_random_frames_then_a_normal_utterance(server: RunningServer) -> None:
    rng = random.Random(20240607)
    sent = [random_frame(rng) for _ in range(200)]
    cancels = sum(f == json.dumps({"type": "cancel"}) for f in sent)
    marker = {"type": "start", "format": "pcm_s16le", "sample_rate": 22050, "frame_ms": 37}
    async with connect(server.ws, open_timeout=10) as conn:
        got = Collected()

        async def read_until_marker() -> None:
            async with asyncio.timeout(60):
                while True:
                    await collect(conn, until=("ready",), within=60, into=got)
                    assert not got.closed, got.summary()
                    if got.messages[-1]["frame_ms"] == 37:
                        return

        reader = asyncio.create_task(read_until_marker())
        pauses = random.Random(7)
        for frame in sent:
            await conn.send(frame)
            if pauses.random() < 0.08:  # now and then let speech get going: ~3 s in all
                await asyncio.sleep(pauses.uniform(0.05, 0.3))
        await send_json(conn, {"type": "cancel"})  # stop whatever the fuzz left speaking
        await send_json(conn, {**marker, "speed": 1.0, "voice": "en_US-joe-medium"})
        await reader
        types = Counter(msg["type"] for msg in got.messages)
        assert set(types) <= SERVER_TYPES
        assert {e["code"] for e in got.of_type("error")} <= set(m.ERROR_CODES)
        assert types["cancelled"] == cancels + 1  # every cancel answered exactly once
        assert types["segment"] > 0 and got.frames  # the fuzz got as far as speaking
        print(
            f"\nFIGURES network fuzz: {len(sent)} random frames -> {dict(types)}, "
            f"{len(got.frames)} audio frames"
        )
        # the connection is as good as new
        await send_json(conn, {"type": "text", "text": SHORT})
        await send_json(conn, {"type": "end"})
        after = await collect(conn, within=30)
        metrics = check_utterance(after)
        assert {len(f) for f in after.frames} == {round(22050 * 37 / 1000) * 2}
        assert metrics["segments"] == 1
