"""Tests for protocol.session: the protocol state machine, driven without sockets or engine.

A small harness plays the server adapter: it feeds messages with explicit
``now`` values, runs "synthesis" by handing the session float32 chunks at the
voice's rate, and drains the outbound queue into ``wire`` (what the client
would receive, in order), calling ``frame_sent`` for every audio frame.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.audio import ENCODINGS, AudioEncoding, bytes_per_sample
from engine.codecs import decode
from engine.splitter import split_text
from protocol import messages as m
from protocol.session import (
    Limits,
    SegmentJob,
    SendDone,
    SendFrame,
    SendJson,
    Session,
    Utterance,
)

VOICES = {"v": 22050, "w": 16000}
Samples = npt.NDArray[np.float32]
WireItem = dict[str, Any] | SendFrame


def nows(text: str) -> str:
    """``text`` without any whitespace."""
    return "".join(text.split())


def constant(n: int, value: float = 0.5) -> Samples:
    return np.full(n, value, dtype=np.float32)


class Harness:
    """The server adapter, minus sockets and engine."""

    def __init__(self, *, voices: dict[str, int] | None = None, **kwargs: Any) -> None:
        self.s = Session("s1", voices or VOICES, "v", **kwargs)
        self.now = 0.0
        self.wire: list[WireItem] = []
        self.done_for: list[Utterance] = []  # the utterance of each "done" on the wire

    # ------------------------------------------------------------------ input
    def send(self, msg: m.ClientMessage | m.ProtocolError, at: float | None = None) -> None:
        if at is not None:
            self.now = at
        self.s.receive(msg, self.now)

    def text(self, text: str, at: float | None = None) -> None:
        self.send(m.Text(text), at)

    # -------------------------------------------------------------- synthesis
    def run_job(
        self, samples: Samples | None = None, *, chunks: int = 2, synth_s: float = 0.01
    ) -> SegmentJob | None:
        """Synthesize the next job completely: ``samples`` (default 0.2 s of noise) in chunks."""
        job = self.s.next_job()
        if job is None:
            return None
        if samples is None:
            samples = np.random.default_rng(job.index).uniform(-0.5, 0.5, 4410).astype(np.float32)
        for piece in np.array_split(samples, chunks):
            self.s.deliver_audio(job, piece, synth_s)
        self.s.finish_job(job, synth_s)
        return job

    def run_all(self, samples: Samples | None = None) -> int:
        count = 0
        while self.run_job(samples) is not None:
            count += 1
        return count

    # ----------------------------------------------------------------- output
    def pop(self, limit: int | None = None, at: float | None = None) -> list[WireItem]:
        """Send up to ``limit`` outbound items (all by default); returns them."""
        if at is not None:
            self.now = at
        sent: list[WireItem] = []
        while limit is None or len(sent) < limit:
            item = self.s.pop_outbound()
            if item is None:
                break
            if isinstance(item, SendFrame):
                self.s.frame_sent(item, self.now)
                sent.append(item)
            elif isinstance(item, SendDone):
                self.done_for.append(item.utterance)
                sent.append(self.s.render_done(item))
            else:
                sent.append(item.message)
        self.wire.extend(sent)
        return sent

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [w for w in self.wire if isinstance(w, dict) and kind in (None, w["type"])]

    def errors(self) -> list[str]:
        return [w["code"] for w in self.messages("error")]

    def kinds(self) -> list[str]:
        """The wire as a list of message types, with ``frame`` for audio."""
        return ["frame" if isinstance(w, SendFrame) else w["type"] for w in self.wire]


def collapse(kinds: list[str]) -> list[str]:
    """Runs of ``frame`` collapsed into one ``frames``."""
    out: list[str] = []
    for k in kinds:
        k = "frames" if k == "frame" else k
        if not (k == "frames" and out and out[-1] == "frames"):
            out.append(k)
    return out


# ---------------------------------------------------------------------- ready
def test_explicit_start_sends_ready_with_effective_settings() -> None:
    h = Harness()
    h.send(m.Start())
    h.pop()
    assert h.wire == [
        {
            "type": "ready",
            "session_id": "s1",
            "voice": "v",
            "format": "pcm_s16le",
            "sample_rate": 22050,
            "frame_ms": 20,
            "speed": 1.0,
            "realtime": True,
            "channels": 1,
        }
    ]


def test_implicit_ready_comes_first_before_any_audio() -> None:
    h = Harness()
    assert h.s.pop_outbound() is None  # nothing is sent before the client speaks
    h.text("Hello there. How are you?")
    h.send(m.End())
    h.run_all()
    h.pop()
    assert h.kinds()[0] == "ready"
    assert h.kinds().count("ready") == 1
    assert h.messages("ready")[0]["sample_rate"] == 22050


def test_start_with_other_voice_defaults_to_its_rate() -> None:
    h = Harness()
    h.send(m.Start(voice="w"))
    h.send(m.Start(voice="v", sample_rate=8000, format="mulaw", frame_ms=10, speed=1.5))
    h.send(m.Start(format="alaw"))  # changes only the field it names
    h.pop()
    ready = h.messages("ready")
    assert [r["voice"] for r in ready] == ["w", "v", "v"]
    assert [r["sample_rate"] for r in ready] == [16000, 8000, 8000]
    assert [r["format"] for r in ready] == ["pcm_s16le", "mulaw", "alaw"]
    assert [r["frame_ms"] for r in ready] == [20, 10, 10]
    assert [r["speed"] for r in ready] == [1.0, 1.5, 1.5]


def test_settings_of_start_apply_to_the_audio() -> None:
    h = Harness()
    h.send(m.Start(voice="w", format="mulaw", sample_rate=8000, frame_ms=40))
    h.text("Hi there.")
    h.send(m.End())
    h.run_all(np.zeros(1600, np.float32))
    h.pop()
    frames = [w for w in h.wire if isinstance(w, SendFrame)]
    assert frames
    for f in frames:
        assert (f.frame.encoding, f.frame.sample_rate, f.frame.samples) == ("mulaw", 8000, 320)
        assert len(f.frame.data) == 320


def test_explicit_sample_rate_survives_a_voice_change() -> None:
    h = Harness()
    h.send(m.Start(format="mulaw", sample_rate=8000))  # e.g. a telephony client
    h.send(m.Start(voice="w"))
    h.pop()
    assert h.messages("ready")[-1]["sample_rate"] == 8000


def test_unknown_voice_is_an_error_and_keeps_settings() -> None:
    h = Harness()
    h.send(m.Start(voice="nope", sample_rate=8000))
    h.send(m.Start())
    h.pop()
    assert h.kinds() == ["error", "ready"]
    assert h.errors() == ["unknown_voice"]
    assert h.messages("ready")[0]["voice"] == "v"
    assert h.messages("ready")[0]["sample_rate"] == 22050


def test_start_mid_utterance_is_bad_state() -> None:
    h = Harness()
    h.text("Hello")
    h.send(m.Start(voice="w"))
    h.send(m.End())
    h.send(m.Start(voice="w"))  # still ending: not allowed either
    h.pop()
    assert h.errors() == ["bad_state", "bad_state"]
    assert [r["voice"] for r in h.messages("ready")] == ["v"]
    h.run_all()
    h.pop()  # done is sent
    h.send(m.Start(voice="w"))  # after done it is fine
    h.pop()
    assert h.errors() == ["bad_state", "bad_state"]
    assert [r["voice"] for r in h.messages("ready")] == ["v", "w"]


# ------------------------------------------------------------ order & audio
def check_wire(h: Harness) -> None:
    """Segment messages precede their audio and carry its offset; frames are whole."""
    audio_ms = 0.0
    for item in h.wire:
        if isinstance(item, SendFrame):
            audio_ms += item.frame.duration_ms
        elif item["type"] == "segment":
            assert item["audio_offset_ms"] == round(audio_ms, 1)
        elif item["type"] in ("done", "cancelled"):
            audio_ms = 0.0


def test_wire_order_and_segment_offsets() -> None:
    h = Harness()
    h.text("Hello there, ", at=1.0)
    h.text("my friend. How can I help?", at=1.1)
    h.send(m.End(), at=1.2)
    assert h.run_all() == 2
    h.pop(at=1.3)
    assert collapse(h.kinds()) == ["ready", "segment", "frames", "segment", "frames", "done"]
    segments = h.messages("segment")
    assert [s["index"] for s in segments] == [0, 1]
    assert [s["text"] for s in segments] == ["Hello there, my friend.", "How can I help?"]
    assert segments[0]["audio_offset_ms"] == 0.0
    # the second segment starts after the first one's audio and the pause between them
    assert segments[1]["audio_offset_ms"] > 200.0
    check_wire(h)
    done = h.messages("done")[0]
    assert done["metrics"]["segments"] == 2
    frames_ms = sum(w.frame.duration_ms for w in h.wire if isinstance(w, SendFrame))
    assert done["metrics"]["audio_ms"] == round(frames_ms, 1)


@pytest.mark.parametrize("fmt", ENCODINGS)
@pytest.mark.parametrize(
    ("voice", "rate", "frame_ms"),
    [
        ("v", None, 20),
        ("v", 16000, 10),
        ("w", 8000, 20),
        ("v", 48000, 200),
        ("w", None, 30),
        ("v", 44100, 15),
    ],
)
def test_every_frame_is_whole_and_bytes_match_audio_ms(
    fmt: AudioEncoding, voice: str, rate: int | None, frame_ms: int
) -> None:
    h = Harness()
    h.send(m.Start(voice=voice, format=fmt, sample_rate=rate, frame_ms=frame_ms))
    h.text("One sentence here. Another one, a bit longer, follows it! And a third?")
    h.send(m.End())
    rng = np.random.default_rng(7)
    native = VOICES[voice]
    while (job := h.s.next_job()) is not None:
        for _ in range(3):  # uneven chunks, not frame-aligned
            n = int(rng.integers(1, native // 5))
            h.s.deliver_audio(job, rng.uniform(-0.8, 0.8, n).astype(np.float32), 0.001)
        h.s.finish_job(job)
    h.pop()
    out_rate = rate or native
    width = bytes_per_sample(fmt)
    expected_samples = round(frame_ms * out_rate / 1000)
    frames = [w.frame for w in h.wire if isinstance(w, SendFrame)]
    assert len(frames) > 3
    for f in frames:
        assert f.encoding == fmt
        assert f.sample_rate == out_rate
        assert f.samples == expected_samples
        assert len(f.data) == expected_samples * width
    total_bytes = sum(len(f.data) for f in frames)
    audio_ms = h.messages("done")[0]["metrics"]["audio_ms"]
    # audio_ms is rounded to 0.1 ms
    assert total_bytes / width == pytest.approx(audio_ms * out_rate / 1000, abs=0.06 * out_rate)
    check_wire(h)


PARAGRAPH = (
    "Well, I think we should leave now, because it is getting rather late. "
    "Dr. Smith said so! Did he really? Yes... he did. The U.S. team won 3.5 points "
    "at 5 p.m. on Friday.\n\nA new paragraph starts here, and it never ends"
)


def segments_for(pieces: list[str], engine_between: bool) -> list[str]:
    # Pieces 10 ms apart, 1 s of audio per segment: the listener never runs dry, so the
    # splitter alone decides (a dry listener lets a clause end a segment: speak_soon).
    h = Harness()
    for i, piece in enumerate(pieces):
        h.text(piece, at=0.01 * i)
        if engine_between:
            h.run_all(constant(22050))
            h.pop()
    h.send(m.End(), at=0.01 * len(pieces))
    h.run_all(constant(22050))
    h.pop()
    assert h.errors() == []
    assert h.messages("done")
    return [s["text"] for s in h.messages("segment")]


WHOLE_SEGMENTS = segments_for([PARAGRAPH], engine_between=False)


def test_whole_paragraph_segments_are_the_splitters() -> None:
    assert [s.strip() for s in split_text(PARAGRAPH)] == WHOLE_SEGMENTS
    assert len(WHOLE_SEGMENTS) >= 5


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=len(PARAGRAPH) - 1), max_size=40),
    engine_between=st.booleans(),
)
def test_token_by_token_gives_the_same_segments(cuts: list[int], engine_between: bool) -> None:
    bounds = [0, *sorted(set(cuts)), len(PARAGRAPH)]
    pieces = [PARAGRAPH[a:b] for a, b in itertools.pairwise(bounds)]
    assert segments_for(pieces, engine_between) == WHOLE_SEGMENTS


# ----------------------------------------------------------- flush & end
def test_flush_releases_buffered_text() -> None:
    h = Harness()
    h.text("Hello there my friend", at=1.0)
    assert h.s.next_job() is None  # no sentence end yet
    h.send(m.Flush(), at=1.05)
    job = h.s.next_job()
    assert job is not None
    assert job.text == "Hello there my friend"
    assert job.trigger_at == 1.05


def test_flush_deadline_fires_after_silence_and_not_before() -> None:
    h = Harness(limits=Limits(flush_after_s=0.3))
    assert h.s.flush_deadline() is None
    h.text("Hello there", at=1.0)
    assert h.s.flush_deadline() == pytest.approx(1.3)
    h.text(" my friend", at=1.2)  # new text pushes the deadline back
    deadline = h.s.flush_deadline()
    assert deadline == pytest.approx(1.5)
    h.s.on_flush_deadline(1.49)
    assert h.s.next_job() is None
    assert deadline is not None
    h.s.on_flush_deadline(deadline)
    job = h.s.next_job()
    assert job is not None
    assert job.text == "Hello there my "  # "friend" may still grow ("friendly")
    assert job.trigger_at == deadline
    h.s.finish_job(job)
    assert h.s.flush_deadline() == pytest.approx(1.2 + 4 * 0.3)  # the word waits longer
    h.s.on_flush_deadline(2.3)
    assert h.s.next_job() is None
    h.s.on_flush_deadline(2.4)
    job = h.s.next_job()
    assert job is not None and job.text == "friend"
    assert h.s.flush_deadline() is None  # nothing buffered any more


def test_idle_flush_never_cuts_a_number_or_word_in_two() -> None:
    """An LLM stream that stalls mid-token (found by an exploratory client)."""
    h = Harness(limits=Limits(flush_after_s=0.3))
    pieces = [(0.0, "Your total is $1"), (0.5, "9.99 and the temp"), (1.0, "erature is 72")]
    for at, piece in pieces:
        h.text(piece, at=at)
        h.s.on_flush_deadline(at + 0.3)
    h.text(" degrees.", at=1.5)
    h.s.on_flush_deadline(1.8)  # ends in punctuation: all of it goes
    h.run_all()
    h.pop()
    segments = [s["text"] for s in h.messages("segment")]
    assert segments == ["Your total is", "$19.99 and the", "temperature is", "72 degrees."]


def test_no_flush_deadline_when_nothing_is_buffered_or_after_end() -> None:
    h = Harness()
    h.text("Hello there. How", at=1.0)  # the sentence is out; "How" is buffered
    assert h.s.flush_deadline() is not None
    h.send(m.End(), at=1.1)
    assert h.s.flush_deadline() is None
    h.s.on_flush_deadline(100.0)  # harmless
    h.run_all()
    h.pop()
    assert [s["text"] for s in h.messages("segment")] == ["Hello there.", "How"]


def test_done_waits_for_the_last_frame() -> None:
    h = Harness()
    h.text("Hello there.")
    h.send(m.Flush())
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(2000), 0.01)
    h.send(m.End())  # while the job is still running
    h.pop()
    assert "done" not in h.kinds()
    h.s.deliver_audio(job, constant(2000), 0.01)
    h.s.finish_job(job)
    h.pop()
    assert h.kinds()[-1] == "done"
    assert h.kinds().count("done") == 1
    assert h.s.utterance is None


@pytest.mark.parametrize("msg", [m.Flush(), m.End()])
def test_flush_or_end_without_utterance_is_no_utterance(msg: m.ClientMessage) -> None:
    h = Harness()
    h.send(msg)
    h.text("Hi.")
    h.send(m.End())
    h.run_all()
    h.send(msg)  # after done
    h.pop()
    assert h.errors() == ["no_utterance", "no_utterance"]


def test_end_twice_is_no_utterance() -> None:
    h = Harness()
    h.text("Hi.")
    h.send(m.End())
    h.send(m.End())
    h.pop()
    assert h.errors() == ["no_utterance"]


def test_text_after_end_is_bad_state_and_not_spoken() -> None:
    h = Harness()
    h.text("Hello there.")
    h.send(m.End())
    h.text(" Sneaky extra words.")
    h.run_all()
    h.pop()
    assert h.errors() == ["bad_state"]
    assert [s["text"] for s in h.messages("segment")] == ["Hello there."]
    assert h.kinds()[-1] == "done"


def test_empty_text_is_bad_field() -> None:
    h = Harness()
    h.text("")
    h.pop()
    assert h.errors() == ["bad_field"]
    assert h.s.utterance is None


def test_protocol_errors_become_error_messages() -> None:
    h = Harness()
    h.send(m.ProtocolError("rate_limited", "slow down"))
    h.pop()
    assert h.wire == [{"type": "error", "code": "rate_limited", "message": "slow down"}]


def test_a_refused_text_is_named_in_the_error() -> None:
    h = Harness()
    h.send(m.ProtocolError("rate_limited", "not accepted", unspoken_text="Hello there."))
    h.pop()
    assert h.wire == [
        {
            "type": "error",
            "code": "rate_limited",
            "message": "not accepted",
            "unspoken_text": "Hello there.",
        }
    ]
    assert h.s.utterance is None


# ------------------------------------------------------------------ limits
def test_utterance_char_limit_rejects_the_text() -> None:
    h = Harness(limits=Limits(max_utterance_chars=20))
    h.text("Twelve chars")  # 12
    h.text(" is too many")  # 12 more: over 20
    h.text(" ok.")  # 4 more: 16, fine
    h.send(m.End())
    h.run_all()
    h.pop()
    assert h.errors() == ["text_too_long"]
    assert [s["text"] for s in h.messages("segment")] == ["Twelve chars ok."]
    assert h.kinds()[-1] == "done"


def test_rejected_first_text_opens_no_utterance() -> None:
    h = Harness(limits=Limits(max_utterance_chars=5))
    h.text("far too long for the limit")
    h.send(m.Start(voice="w"))
    h.pop()
    assert h.errors() == ["text_too_long"]
    assert h.messages("ready")[-1]["voice"] == "w"


# ------------------------------------------------------------------- cancel
SENTENCES = "First sentence here. Second one follows. Third is the last one."


def cancel_setup(end: bool = False) -> Harness:
    """Three segments; all audio queued (10 frames of 0.5 each, plus pauses)."""
    h = Harness()
    h.text(SENTENCES, at=1.0)
    if end:
        h.send(m.End(), at=1.0)
    else:
        h.send(m.Flush(), at=1.0)
    assert h.run_all(constant(4410)) == 3
    return h


def wire_after_cancel(h: Harness) -> tuple[list[WireItem], dict[str, Any]]:
    before = len(h.wire)
    h.send(m.Cancel())
    h.pop()
    after = h.wire[before:]
    cancelled = [w for w in after if isinstance(w, dict) and w["type"] == "cancelled"]
    assert len(cancelled) == 1
    return after, cancelled[0]


@pytest.mark.parametrize("popped", [0, 1, 2, 5, 12, 15, 25, 34, 40, 1000])
def test_cancel_drops_queued_frames_and_reports_text(popped: int) -> None:
    h = cancel_setup(end=False)
    queued_frames = [i.frame for i in h.s.outbound if isinstance(i, SendFrame)]
    sent = h.pop(popped)
    sent_frames = [w for w in sent if isinstance(w, SendFrame)]
    after, cancelled = wire_after_cancel(h)

    assert "done" not in h.kinds()
    frames_after = [w for w in after if isinstance(w, SendFrame)]
    assert len(frames_after) <= 1
    # no frame of the cancelled utterance after "cancelled"
    assert all(not isinstance(w, SendFrame) for w in after[after.index(cancelled) :])
    remaining = queued_frames[len(sent_frames) :]
    if remaining:
        # the next frame the listener would have heard, faded out to silence
        assert len(frames_after) == 1
        fade = frames_after[0].frame
        assert fade.samples == remaining[0].samples
        samples = decode(fade.data, fade.encoding)
        assert samples[-1] == 0.0
        assert abs(samples[0]) <= abs(decode(remaining[0].data, fade.encoding)[0])
    else:
        assert frames_after == []
    heard = sent_frames + frames_after
    assert cancelled["audio_sent_ms"] == round(sum(f.frame.duration_ms for f in heard), 1)
    spoken, unspoken = cancelled["spoken_text"], cancelled["unspoken_text"]
    assert nows(spoken + unspoken) == nows(SENTENCES)
    if heard:
        assert spoken.startswith("First sentence here.")
    else:
        assert spoken == ""
    assert h.s.utterance is None


def test_cancel_after_end_while_frames_are_still_queued() -> None:
    h = cancel_setup(end=True)  # everything synthesized, 'done' queued behind ~50 frames
    h.pop(5)
    after, cancelled = wire_after_cancel(h)
    assert "done" not in h.kinds()
    assert all(not isinstance(w, SendFrame) for w in after[after.index(cancelled) :])
    assert cancelled["spoken_text"] == "First sentence here."


def test_abandon_stops_synthesis_and_queues_nothing() -> None:
    h = Harness()
    h.text("Hello there, this is a sentence. And another one.", at=1.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(4410), 0.01)
    queued = len(h.s.outbound)
    h.s.abandon()
    assert not h.s.job_live(job)
    h.s.deliver_audio(job, constant(4410), 0.01)  # the chunk a worker was computing
    assert len(h.s.outbound) == queued
    h.s.abandon()  # idempotent, and harmless with nothing in progress
    Harness().s.abandon()


def test_cancel_mid_synthesis_stops_the_job() -> None:
    h = Harness()
    h.text("Hello there, this is a sentence. And another one.", at=1.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(4410), 0.01)
    h.pop(3)  # ready, segment, one frame
    h.send(m.Cancel())
    assert not h.s.job_live(job)
    h.s.deliver_audio(job, constant(4410), 0.01)  # a late chunk is ignored
    h.s.finish_job(job)
    h.pop()
    kinds = h.kinds()
    assert kinds[-1] == "cancelled"
    assert kinds.count("frame") == 2  # one sent, one faded
    cancelled = h.messages("cancelled")[0]
    assert cancelled["spoken_text"] == "Hello there, this is a sentence."
    assert cancelled["unspoken_text"] == "And another one."
    assert cancelled["audio_sent_ms"] == 40.0


def test_cancel_while_idle_is_cancelled_with_zeros() -> None:
    h = Harness()
    h.send(m.Cancel())
    h.pop()
    assert h.wire == [
        {"type": "cancelled", "audio_sent_ms": 0.0, "spoken_text": "", "unspoken_text": ""}
    ]


def test_cancel_reports_buffered_text_as_unspoken() -> None:
    h = Harness()
    h.text("Nothing released yet")
    h.send(m.Cancel())
    h.pop()
    cancelled = h.messages("cancelled")[0]
    assert cancelled["spoken_text"] == ""
    assert cancelled["unspoken_text"] == "Nothing released yet"
    assert cancelled["audio_sent_ms"] == 0.0


def test_after_cancel_next_text_starts_a_new_utterance_without_new_ready() -> None:
    h = cancel_setup(end=False)
    h.pop(5)
    h.send(m.Cancel())
    h.text("Fresh start.", at=5.0)
    h.send(m.End(), at=5.0)
    assert h.run_all() == 1
    h.pop(at=5.1)
    # ready is sent once per session unless the client sends start again
    assert h.kinds().count("ready") == 1
    assert collapse(h.kinds()[h.kinds().index("cancelled") :]) == [
        "cancelled",
        "segment",
        "frames",
        "done",
    ]
    assert h.messages("segment")[-1] == {
        "type": "segment",
        "index": 0,
        "text": "Fresh start.",
        "audio_offset_ms": 0.0,
    }
    assert h.messages("done")[-1]["metrics"]["segments"] == 1
    assert h.messages("done")[-1]["metrics"]["ttft_ms"] == 100.0


def test_start_after_cancel_sends_ready_again() -> None:
    h = cancel_setup(end=False)
    h.send(m.Cancel())
    h.send(m.Start(format="alaw"))
    h.pop()
    assert h.kinds().count("ready") == 2
    assert h.errors() == []


def test_cancel_announces_no_segment_it_reports_unspoken() -> None:
    h = cancel_setup(end=False)
    h.pop(3)  # ready, segment 0, one frame of segment 0
    after, cancelled = wire_after_cancel(h)
    announced = [w["text"] for w in h.messages("segment")]
    for text in announced:
        assert text in cancelled["spoken_text"]
    assert [w["type"] for w in after if isinstance(w, dict)] == ["cancelled"]


def test_pause_before_a_segment_does_not_make_it_spoken() -> None:
    h = cancel_setup(end=False)
    # segment 0 is 10 frames (4410 samples at 22050 Hz, 441 per frame), then a 200 ms pause
    sent = h.pop(2 + 10 + 1)  # ready, segment 0, its 10 frames, one frame of the pause
    assert [w["type"] for w in sent if isinstance(w, dict)] == ["ready", "segment"]
    last = sent[-1]
    assert isinstance(last, SendFrame)
    assert not decode(last.frame.data, last.frame.encoding).any()  # silence
    _, cancelled = wire_after_cancel(h)
    assert cancelled["spoken_text"] == "First sentence here."
    assert "Second" in cancelled["unspoken_text"]


# ------------------------------------------------------------------ metrics
def test_ttft_is_from_the_message_that_released_the_first_segment() -> None:
    h = Harness()
    h.text("Hello", at=10.0)
    h.text(" there. How", at=10.5)  # "Hello there. " is released by this text
    h.send(m.End(), at=10.6)
    h.run_all()
    h.pop(at=10.75)  # the first frame is written at 10.75
    metrics = h.messages("done")[0]["metrics"]
    assert metrics["ttft_ms"] == 250.0
    assert metrics["ttfa_from_first_text_ms"] == 750.0
    assert metrics["segments"] == 2
    assert metrics["synth_ms"] == pytest.approx(2 * 3 * 10.0)  # 2 jobs x (2 chunks + finish)
    assert metrics["rtf"] == pytest.approx(metrics["synth_ms"] / metrics["audio_ms"], abs=1e-3)


def test_ttft_after_flush_counts_from_the_flush() -> None:
    h = Harness()
    h.text("Hello there my", at=2.0)
    h.text(" friend", at=2.1)
    h.send(m.Flush(), at=3.0)
    h.run_all()
    h.pop(at=3.02)
    h.send(m.End(), at=3.1)
    h.pop()
    metrics = h.messages("done")[0]["metrics"]
    assert metrics["ttft_ms"] == 20.0
    assert metrics["ttfa_from_first_text_ms"] == 1020.0


def test_ttft_uses_the_first_frame_not_later_ones() -> None:
    h = Harness()
    h.text("Hello there.", at=0.0)
    h.send(m.End(), at=0.0)
    h.run_all()
    h.pop(1, at=0.1)  # ready
    h.pop(2, at=0.2)  # segment, first frame
    h.pop(at=5.0)
    assert h.messages("done")[0]["metrics"]["ttft_ms"] == 200.0


def test_done_without_any_frame_has_no_ttft() -> None:
    h = Harness()
    h.text("Hi.")
    h.send(m.End())
    job = h.s.next_job()
    assert job is not None
    h.s.fail_job(job, "engine exploded")
    h.pop()
    metrics = h.messages("done")[0]["metrics"]
    assert metrics["ttft_ms"] is None
    assert metrics["rtf"] is None
    assert metrics["audio_ms"] == 0.0


# ------------------------------------------------------------- scheduling
def test_deadline_of_a_fresh_utterance_is_its_trigger_time() -> None:
    h = Harness()
    h.text("Hello there. How are", at=3.0)
    job = h.s.next_job()
    assert job is not None
    assert h.s.compute_deadline(job, now=3.2) == 3.0
    assert h.s.awaiting_first_audio(job)


def test_once_a_frame_is_out_the_listener_no_longer_awaits_first_audio() -> None:
    h = Harness()
    h.text("Hello there. How are", at=3.0)
    h.run_job(constant(22050 * 2))
    h.pop(at=3.1)
    h.send(m.Flush(), at=3.5)
    job = h.s.next_job()
    assert job is not None
    assert not h.s.awaiting_first_audio(job)


def test_deadline_with_audio_buffered_is_when_the_listener_runs_out() -> None:
    h = Harness()
    h.text("Hello there. How are", at=3.0)
    h.run_job(constant(22050 * 2))  # 2 s of audio
    h.pop(at=3.1)  # first frame written at 3.1
    h.send(m.Flush(), at=3.5)
    job = h.s.next_job()
    assert job is not None
    assert job.trigger_at == 3.5
    deadline = h.s.compute_deadline(job, now=3.5)
    assert deadline > job.trigger_at
    produced_ms = sum(w.frame.duration_ms for w in h.wire if isinstance(w, SendFrame))
    assert deadline == pytest.approx(3.1 + produced_ms / 1000)


def test_a_client_that_is_not_realtime_is_not_held_back_nor_counted_late() -> None:
    h = Harness(limits=Limits(lookahead_ms=1000.0, max_unsent_ms=60_000.0))
    h.send(m.Start(realtime=False), at=0.0)
    ready = h.pop()[0]
    assert isinstance(ready, dict) and ready["realtime"] is False
    h.text("A long first sentence here. Then more. ", at=0.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(22050 * 3), 0.01)  # 3 s of audio, beyond the look-ahead
    assert h.s.compute_wait(job, now=0.0) == 0.0
    assert frames_of(h, at=1.0)[0] is False  # the first frame starts the clock at 1.0
    h.s.deliver_audio(job, constant(22050), 0.01)
    # Frames a real-time listener would have needed seconds ago: no underrun.
    assert not any(frames_of(h, at=30.0))
    assert job.utterance.underruns == 0


def test_a_realtime_client_is_held_to_the_look_ahead() -> None:
    h = Harness(limits=Limits(lookahead_ms=1000.0, max_unsent_ms=60_000.0))
    h.text("A long first sentence here. Then more. ", at=0.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(22050 * 3), 0.01)
    frames_of(h, at=0.0)
    assert h.s.compute_wait(job, now=0.0) == pytest.approx(2.0, abs=0.05)


def test_compute_wait_bounds_audio_ahead_of_playback() -> None:
    h = Harness(limits=Limits(lookahead_ms=1000.0, max_unsent_ms=60_000.0))
    h.text("A long first sentence here. Then", at=0.0)
    job = h.s.next_job()
    assert job is not None
    assert h.s.compute_wait(job, now=0.0) == 0.0  # nothing produced yet
    h.s.deliver_audio(job, constant(22050 * 3), 0.01)  # 3 s computed
    h.pop(at=10.0)  # playback starts at 10.0
    produced = sum(w.frame.duration_ms for w in h.wire if isinstance(w, SendFrame))
    assert h.s.compute_wait(job, now=10.0) == pytest.approx((produced - 1000.0) / 1000)
    assert h.s.compute_wait(job, now=11.0) == pytest.approx((produced - 2000.0) / 1000)
    assert h.s.compute_wait(job, now=10.0 + produced / 1000 - 0.9) == 0.0  # within lookahead
    assert h.s.compute_wait(job, now=100.0) == 0.0  # underrun: go now


def test_compute_wait_pauses_while_too_much_audio_is_unsent() -> None:
    h = Harness(limits=Limits(lookahead_ms=1e9, max_unsent_ms=1000.0))
    h.text("A long first sentence here. Then", at=0.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(22050 * 2), 0.01)  # 2 s queued, none sent
    assert h.s.compute_wait(job, now=0.0) > 0.0
    h.pop(at=0.0)
    assert h.s.compute_wait(job, now=0.0) == 0.0


# ---------------------------------------------------------------- auth
def test_text_before_authenticating_start_is_unauthorized() -> None:
    h = Harness(token="secret", authenticated=False)
    h.text("Hello.")
    h.pop()
    assert h.errors() == ["unauthorized"]
    assert h.s.close_request is not None
    assert h.s.close_request[0] == 1008
    assert h.s.utterance is None


@pytest.mark.parametrize("msg", [m.Flush(), m.End(), m.Cancel()])
def test_any_message_before_auth_is_unauthorized(msg: m.ClientMessage) -> None:
    h = Harness(token="secret", authenticated=False)
    h.send(msg)
    h.pop()
    assert h.errors() == ["unauthorized"]
    assert h.s.close_request is not None
    assert h.s.close_request[0] == 1008


@pytest.mark.parametrize("token", [None, "", "wrong", "secret "])
def test_start_with_wrong_token_is_unauthorized(token: str | None) -> None:
    h = Harness(token="secret", authenticated=False)
    h.send(m.Start(token=token))
    h.pop()
    assert h.errors() == ["unauthorized"]
    assert h.messages("ready") == []
    assert h.s.close_request is not None
    assert h.s.close_request[0] == 1008


def test_start_with_right_token_authenticates() -> None:
    h = Harness(token="secret", authenticated=False)
    h.send(m.Start(token="secret", voice="w"))
    h.text("Hello.")
    h.send(m.End())
    h.run_all()
    h.pop()
    assert h.errors() == []
    assert h.s.close_request is None
    assert collapse(h.kinds()) == ["ready", "segment", "frames", "done"]
    assert h.messages("ready")[0]["voice"] == "w"


def test_session_authenticated_by_url_token_needs_no_start() -> None:
    h = Harness(token="secret", authenticated=True)
    h.text("Hello.")
    h.send(m.End())
    h.run_all()
    h.pop()
    assert h.errors() == []
    assert h.kinds()[-1] == "done"


# ----------------------------------------------------------- engine failure
def test_failed_segment_is_reported_and_the_utterance_completes() -> None:
    h = Harness()
    h.text("First sentence here. Second one fails. Third works.")
    h.send(m.End())
    h.run_job()
    job = h.s.next_job()
    assert job is not None
    assert job.index == 1
    h.s.fail_job(job, "onnxruntime error")
    h.run_all()
    h.pop()
    errors = h.messages("error")
    assert errors == [
        {
            "type": "error",
            "code": "synthesis_failed",
            "message": "onnxruntime error",
            "segment": 1,
            "unspoken_text": "Second one fails.",
        }
    ]
    assert [s["index"] for s in h.messages("segment")] == [0, 2]
    assert h.kinds()[-1] == "done"
    assert h.messages("done")[0]["metrics"]["segments"] == 3
    check_wire(h)


def test_failing_the_last_job_still_gives_done() -> None:
    h = Harness()
    h.text("Only one.")
    h.send(m.Flush())
    job = h.s.next_job()
    assert job is not None
    h.send(m.End())
    h.s.fail_job(job, "boom")
    h.pop()
    assert h.kinds() == ["ready", "error", "done"]
    assert h.s.utterance is None


def test_partial_audio_of_a_failed_segment_does_not_leak_into_the_next() -> None:
    h = Harness()
    h.text("First sentence here. Second sentence here.")
    h.send(m.End())
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(441 + 100), 0.01)  # one whole frame and 100 samples
    h.s.fail_job(job, "boom")
    h.run_job(np.zeros(882, np.float32))  # segment 1 is silence
    h.pop()
    seg1 = h.wire.index(h.messages("segment")[-1])
    for item in h.wire[seg1:]:
        if isinstance(item, SendFrame):
            assert not decode(item.frame.data, item.frame.encoding).any()


# --------------------------------------------------------------------- fuzz
@dataclass
class Model:
    """What the session accepted per utterance, to check that no text is lost."""

    accepted: dict[int, list[str]]  # id(utterance) -> accepted texts
    cancels: list[int | None]  # per cancel, in order: id(utterance), None when idle


def check_fuzz_wire(h: Harness, model: Model) -> None:
    cancels = list(model.cancels)
    dones = [id(u) for u in h.done_for]
    reported: list[str] = []  # segment texts and failed texts since the last done/cancelled
    frame_samples: dict[int, int] = {}
    finished: set[int] = set()
    for item in h.wire:
        if isinstance(item, SendFrame):
            uid = id(item.utterance)
            assert uid not in finished, "a frame after its utterance's done or cancelled"
            assert item.frame.samples == frame_samples.setdefault(uid, item.frame.samples)
            continue
        kind = item["type"]
        if kind == "segment":
            reported.append(item["text"])
        elif kind == "error" and item["code"] == "synthesis_failed":
            reported.append(item["unspoken_text"])
        elif kind == "done":
            uid = dones.pop(0)
            want = Counter(nows("".join(model.accepted.get(uid, []))))
            assert not want - Counter(nows("".join(reported))), "accepted text not spoken"
            finished.add(uid)
            reported = []
        elif kind == "cancelled":
            cancelled_uid = cancels.pop(0)
            if cancelled_uid is None:
                assert item == m.cancelled_message(0.0, "", "")
            else:
                got = nows(item["spoken_text"] + item["unspoken_text"])
                assert Counter(got) == Counter(nows("".join(model.accepted[cancelled_uid])))
                finished.add(cancelled_uid)
            reported = []
    assert cancels == []
    assert dones == []
    assert set(model.accepted) <= finished, "an utterance never ended"


_text_op = st.tuples(
    st.just("text"),
    st.sampled_from(
        [
            *("Hello", " there", ", friend", ". ", "How are you? ", "Fine", "!", "\n\n", "   "),
            *("Dr. Who", " ok.", "x" * 30, " and then", "…", "。", "a", "One. Two. Three. "),
        ]
    ),
)
_engine_op = st.one_of(
    st.tuples(st.just("deliver"), st.integers(min_value=0, max_value=3000)),
    st.tuples(st.sampled_from(["finish", "fail", "drop_job"])),
)
_ops = st.one_of(
    _text_op,
    _text_op,
    _text_op,
    _engine_op,
    _engine_op,
    st.tuples(st.sampled_from(["start", "flush", "end", "cancel", "error", "deadline"])),
    st.tuples(st.just("pop"), st.integers(min_value=0, max_value=40)),
    st.tuples(st.just("tick"), st.floats(min_value=0.0, max_value=0.5)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_ops, min_size=5, max_size=80), seed=st.integers(0, 2**16))
def test_fuzz_no_exception_and_no_text_lost(ops: list[tuple[Any, ...]], seed: int) -> None:
    rng = random.Random(seed)
    h = Harness(limits=Limits(max_utterance_chars=120, flush_after_s=0.3))
    model = Model({}, [])
    job: SegmentJob | None = None
    delivered = False
    for op in ops:
        kind = op[0]
        if kind == "text":
            before = len(h.s.outbound)
            h.text(op[1])
            new = list(h.s.outbound)[before:]
            rejected = any(isinstance(i, SendJson) and i.message["type"] == "error" for i in new)
            if not rejected:
                u = h.s.utterance
                assert u is not None
                model.accepted.setdefault(id(u), []).append(op[1])
        elif kind == "start":
            h.send(m.Start(voice=rng.choice(["v", "w", None]), frame_ms=rng.choice([None, 10])))
        elif kind in ("flush", "end"):
            h.send(m.Flush() if kind == "flush" else m.End())
        elif kind == "cancel":
            u = h.s.utterance
            model.cancels.append(None if u is None else id(u))
            h.send(m.Cancel())
        elif kind == "error":
            h.send(m.ProtocolError("bad_json", "fuzz"))
        elif kind == "deadline":
            h.s.on_flush_deadline(h.now)
        elif kind == "tick":
            h.now += op[1]
        elif kind == "pop":
            h.pop(op[1])
        else:  # engine steps
            if job is None:
                job, delivered = h.s.next_job(), False
            if job is None:
                continue
            if kind == "deliver":
                h.s.deliver_audio(job, constant(op[1], rng.uniform(-1, 1)), 0.001)
                delivered = delivered or op[1] > 0
            elif kind == "finish":
                h.s.finish_job(job, 0.001)
                job = None
            elif kind == "fail" and not delivered:
                h.s.fail_job(job, "fuzz")
                job = None
            elif kind == "drop_job" and not h.s.job_live(job):
                job = None  # the adapter stops working on a cancelled job

    # wind down: finish everything that is still open, then check the whole wire
    if job is not None and h.s.job_live(job):
        h.s.finish_job(job)
    u = h.s.utterance
    if u is not None and not u.ended:
        h.send(m.End())
    h.run_all(constant(500))
    h.pop()
    assert h.s.utterance is None
    assert not h.s.outbound
    check_fuzz_wire(h, model)


# ----------------------------------------------------------------- underruns
def frames_of(h: Harness, at: float) -> list[bool]:
    """Send every queued frame at time ``at``; True for each that was an underrun."""
    late: list[bool] = []
    while (item := h.s.pop_outbound()) is not None:
        if isinstance(item, SendFrame):
            late.append(h.s.frame_sent(item, at))
    return late


def test_frames_in_time_are_no_underrun_and_a_late_one_stalls_the_clock() -> None:
    h = Harness()
    h.send(m.Start(frame_ms=20, sample_rate=22050))
    h.text("One sentence here. ", at=0.0)
    h.text("Another one. ", at=0.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(441 * 10), 0.01)  # 10 frames = 200 ms
    assert frames_of(h, at=1.0) == [False] * 10  # first frame starts the clock at t=1.0
    h.s.deliver_audio(job, constant(441 * 5), 0.01)  # frames due at 1.2 .. 1.28
    assert frames_of(h, at=1.19) == [False] * 5  # early is fine
    h.s.deliver_audio(job, constant(441 * 5), 0.01)  # due at 1.3: arrives 0.2 s late
    late = frames_of(h, at=1.5)
    assert late[0] is True and not any(late[1:])  # the clock stalled, later frames are on time
    h.s.finish_job(job)
    h.send(m.End())
    h.run_all()
    h.pop(at=10.0)  # the second segment, very late: one more underrun
    assert h.messages("done")[0]["metrics"]["underruns"] == 2


def test_a_client_that_pauses_between_sentences_causes_no_underrun() -> None:
    h = Harness()
    h.send(m.Start(frame_ms=20, sample_rate=22050))
    h.text("First sentence here. ", at=0.0)
    h.send(m.Flush())
    h.run_all(constant(441 * 10))  # 200 ms of audio
    assert frames_of(h, at=0.1) == [False] * 10  # the listener hears it by t = 0.3
    h.text("Thirty seconds later comes more. ", at=30.0)  # an LLM that stalled
    h.send(m.Flush())
    h.run_all(constant(441 * 10))
    assert frames_of(h, at=30.2) == [False] * 20  # a pause, then the sentence: no underrun
    # The clock restarted at 30.2 and plays until 30.6; text that comes while the listener
    # still has audio is the server's to deliver in time again.
    h.text("And one more. ", at=30.25)
    h.send(m.Flush())
    h.run_all(constant(441 * 10))
    late = frames_of(h, at=31.5)
    assert late[0] is True and not any(late[1:])
    h.send(m.End())
    h.pop()
    assert h.messages("done")[0]["metrics"]["underruns"] == 1


def reply_after_a_short_sentence(
    first_audio_ms: int,
    rest: str = "I can certainly help you with that order, and it ships today",
) -> list[str]:
    """ "Sure! " spoken, then a slow stream sends ``rest`` word by word at t = 1.0+."""
    h = Harness()
    h.send(m.Start(frame_ms=20, sample_rate=22050))
    first_word, rest = rest.split(" ", 1)
    h.text("Sure! " + first_word, at=0.0)  # "Sure! " is a segment once the next word shows
    h.run_all(constant(441 * first_audio_ms // 20))
    frames_of(h, at=0.1)
    rest = " " + rest
    for i, word in enumerate(rest.split(" ")[1:]):
        h.text(" " + word, at=1.0 + 0.2 * i)
    h.run_all()
    h.pop()
    return [seg["text"] for seg in h.messages("segment")]


def test_a_listener_run_dry_gets_the_next_clause_without_waiting_for_the_sentence() -> None:
    # "Sure!" played out by t = 0.3 (+ its pause): the clause goes as soon as it is whole.
    # (Segment events from here on: "Sure!" went out before.)
    assert reply_after_a_short_sentence(200) == ["I can certainly help you with that order,"]
    # 10 s of "Sure!" still to play: nothing to hurry, the sentence is kept whole.
    assert reply_after_a_short_sentence(10_000) == []


def test_a_listener_run_dry_gets_a_shorter_clause_than_a_first_fragment_needs() -> None:
    # 5 words: under the first fragment's 6, over the 3 a listener in silence is owed.
    rest = "Your current balance is $1,299.99, and the next payment is due on Friday"
    assert reply_after_a_short_sentence(200, rest) == ["Your current balance is $1,299.99,"]
    assert reply_after_a_short_sentence(10_000, rest) == []
    # Too short a clause still waits: two words are no phrase.
    assert reply_after_a_short_sentence(200, "Well, okay, that is done for you today") == []


def test_stall_moves_the_compute_deadline() -> None:
    h = Harness()
    h.text("Hello there. More. ", at=0.0)
    job = h.s.next_job()
    assert job is not None
    h.s.deliver_audio(job, constant(441 * 10), 0.01)
    frames_of(h, at=1.0)
    before = h.s.compute_deadline(job, 1.0)
    h.s.deliver_audio(job, constant(441 * 1), 0.01)
    frames_of(h, at=2.0)  # due at 1.2, sent at 2.0: the listener waited 0.8 s
    assert h.s.compute_deadline(job, 2.0) > before + 0.8
