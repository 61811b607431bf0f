"""One client session of protocol v1 as a plain state machine (no I/O, no clock).

The server adapter feeds it client messages, engine audio and send progress,
always passing ``now`` (seconds, monotonic); it pops outbound items in order
and writes them to the socket. Contracts:

- every item the session wants sent is in :attr:`Session.outbound`, in wire
  order; the adapter sends them FIFO and calls :meth:`Session.frame_sent`
  after each audio frame is written (that is when TTFT is taken);
- segments to synthesize come from :meth:`Session.next_job`; the adapter runs
  the engine and reports back with :meth:`deliver_audio` and :meth:`finish_job`
  (or :meth:`fail_job`), and stops as soon as :meth:`job_live` is false;
- a frame counts as sent (for ``cancelled.audio_sent_ms``) once popped.

Utterance states: none -> open (text arriving) -> ended (``end`` received,
still speaking) -> none (after ``done`` or ``cancelled``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.audio import AudioEncoding, AudioFrame
from engine.engine import pause_after_ms
from engine.output import OutputStream, faded
from engine.splitter import SentenceSplitter
from protocol import messages as m
from protocol.auth import token_matches

UNDERRUN_SLACK_S = 0.02
# An idle flush keeps a word that may still grow ("$1" of "$19.99"); it is spoken when no
# text has come for this many flush intervals (4 x 300 ms by default).
PARTIAL_WORD_WAIT = 4.0
# A listener with less audio left than this while text trickles in gets the next clause
# as a segment of its own (SentenceSplitter.speak_soon) instead of waiting for a sentence end.
STARVING_S = 0.5


@dataclass(frozen=True)
class Limits:
    """Per-session bounds; times in seconds, audio in milliseconds."""

    max_text_chars: int = 10_000
    max_utterance_chars: int = 100_000
    flush_after_s: float = 0.3
    lookahead_ms: float = 4_000.0
    max_unsent_ms: float = 8_000.0


@dataclass(frozen=True)
class Settings:
    """``realtime`` false: a client that stores the audio (a file, a batch job) rather
    than play it as it comes: no look-ahead bound, no underruns, lowest priority."""

    voice: str
    format: AudioEncoding
    sample_rate: int
    frame_ms: int
    speed: float
    realtime: bool = True


@dataclass(frozen=True)
class SegmentJob:
    """One segment to synthesize; ``trigger_at`` is when its text became available."""

    utterance: Utterance
    index: int
    text: str
    trigger_at: float


@dataclass(eq=False)
class Utterance:
    id: int
    settings: Settings
    output: OutputStream
    first_text_at: float
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    pending: deque[SegmentJob] = field(default_factory=deque)
    segments: list[str] = field(default_factory=list)
    started: set[int] = field(default_factory=set)  # segments with audio queued
    heard: set[int] = field(default_factory=set)  # segments with a frame popped for sending
    active: SegmentJob | None = None
    ended: bool = False
    live: bool = True
    chars: int = 0
    last_text_at: float = 0.0
    produced_ms: float = 0.0
    sent_ms: float = 0.0
    synth_s: float = 0.0
    first_trigger_at: float | None = None
    first_frame_at: float | None = None
    stall_s: float = 0.0  # the listener's clock stalled this long waiting for late frames
    underruns: int = 0
    # The listener had heard everything when more text came: its clock restarts at this
    # audio offset (ms), like at the first frame. Waiting for the client is not an underrun.
    restart_at_ms: float | None = None
    words_flushed_at: float | None = None  # last_text_at of the idle flush that kept a word

    def playback_origin(self) -> float | None:
        """When the listener's playback clock would have started, stalls included."""
        return None if self.first_frame_at is None else self.first_frame_at + self.stall_s


@dataclass(frozen=True)
class SendJson:
    """A JSON event; ``utterance`` is set for events that belong to one (segments)."""

    message: dict[str, Any]
    utterance: Utterance | None = None


@dataclass(frozen=True)
class SendFrame:
    frame: AudioFrame
    utterance: Utterance
    segment: int


@dataclass(frozen=True)
class SendDone:
    """Rendered into a ``done`` message at send time, when TTFT is known."""

    utterance: Utterance


Outbound = SendJson | SendFrame | SendDone


class Session:
    """Protocol state for one connection. See the module docstring for the contract."""

    def __init__(
        self,
        session_id: str,
        voices: Mapping[str, int],
        default_voice: str,
        *,
        limits: Limits | None = None,
        token: str | None = None,
        authenticated: bool = True,
    ) -> None:
        self.id = session_id
        self.voices = voices  # name -> native sample rate
        self.limits = limits or Limits()
        self.outbound: deque[Outbound] = deque()
        self.utterance: Utterance | None = None
        self.settings = Settings(default_voice, "pcm_s16le", voices[default_voice], 20, 1.0)
        self.close_request: tuple[int, str] | None = None
        self._token = token
        self._authenticated = authenticated or token is None
        self._ready_sent = False
        self._rate_explicit = False  # a start named sample_rate: keep it across voice changes
        self._ids = itertools.count()

    @property
    def authenticated(self) -> bool:
        """True once a valid token was given (always, on a server without one)."""
        return self._authenticated

    # ------------------------------------------------------------ client input
    def receive(self, msg: m.ClientMessage | m.ProtocolError, now: float) -> None:
        """Apply one parsed client message."""
        if isinstance(msg, m.ProtocolError):
            return self._push(SendJson(m.error_message(msg)))
        if isinstance(msg, m.Start):
            return self._start(msg)
        if not self._authenticated:
            self._error("unauthorized", "send a start message with a valid token first")
            self.close_request = (1008, "unauthorized")
            return None
        if isinstance(msg, m.Text):
            return self._text(msg.text, now)
        if isinstance(msg, m.Cancel):
            return self._cancel()
        u = self.utterance
        if u is None or u.ended:
            return self._error(
                "no_utterance", f"nothing to {type(msg).__name__.lower()}: send text first"
            )
        if isinstance(msg, m.End):
            u.ended = True
        self._release(u, u.splitter.finish(), now)
        self._maybe_done(u)
        return None

    def flush_deadline(self) -> float | None:
        """When buffered text without a sentence end should be spoken anyway.

        ``flush_after_s`` after the last text, everything but a word that may
        still grow (``SentenceSplitter.flush_words``); that word
        ``PARTIAL_WORD_WAIT`` times as long after the last text.
        """
        u = self.utterance
        if u is None or u.ended or not u.splitter.pending.strip():
            return None
        if u.words_flushed_at == u.last_text_at:
            return u.last_text_at + PARTIAL_WORD_WAIT * self.limits.flush_after_s
        return u.last_text_at + self.limits.flush_after_s

    def on_flush_deadline(self, now: float) -> None:
        u = self.utterance
        deadline = self.flush_deadline()
        if u is None or deadline is None or now < deadline:
            return
        if u.words_flushed_at == u.last_text_at:  # the last word waited long enough
            self._release(u, u.splitter.finish(), now)
        else:
            u.words_flushed_at = u.last_text_at
            self._release(u, u.splitter.flush_words(), now)

    def _start(self, msg: m.Start) -> None:
        if self._token is not None and not self._authenticated:
            if not token_matches(msg.token, self._token):
                self._error("unauthorized", "missing or wrong token")
                self.close_request = (1008, "unauthorized")
                return
            self._authenticated = True
        if self.utterance is not None:
            return self._error(
                "bad_state", "start is only allowed between utterances (after done or cancelled)"
            )
        if msg.voice is not None and msg.voice not in self.voices:
            return self._error(
                "unknown_voice", f"unknown voice {msg.voice[:80]!r}; see GET /v1/voices"
            )
        s = self.settings
        voice = msg.voice or s.voice
        self._rate_explicit = self._rate_explicit or msg.sample_rate is not None
        rate = msg.sample_rate or (s.sample_rate if self._rate_explicit else self.voices[voice])
        self.settings = Settings(
            voice,
            msg.format or s.format,
            rate,
            msg.frame_ms or s.frame_ms,
            msg.speed if msg.speed is not None else s.speed,
            msg.realtime if msg.realtime is not None else s.realtime,
        )
        self._ready()

    def _ready(self) -> None:
        s = self.settings
        self._push(
            SendJson(
                m.ready_message(
                    self.id, s.voice, s.format, s.sample_rate, s.frame_ms, s.speed, s.realtime
                )
            )
        )
        self._ready_sent = True

    def _text(self, text: str, now: float) -> None:
        u = self.utterance
        if u is not None and u.ended:
            return self._error(
                "bad_state", "this utterance has ended; wait for done or send cancel"
            )
        if not text:
            return self._error("bad_field", "'text' must not be empty")
        if (u.chars if u else 0) + len(text) > self.limits.max_utterance_chars:
            return self._error(
                "text_too_long",
                f"an utterance may hold at most {self.limits.max_utterance_chars} characters;"
                " this text was not accepted",
            )
        if u is None:
            if not self._ready_sent:
                self._ready()
            s = self.settings
            out = OutputStream(self.voices[s.voice], s.sample_rate, s.format, s.frame_ms)
            u = self.utterance = Utterance(next(self._ids), s, out, first_text_at=now)
        u.chars += len(text)
        u.last_text_at = now
        if self._running_dry(u, now, STARVING_S):  # a slow stream after a short sentence
            u.splitter.speak_soon()
        self._release(u, u.splitter.add(text), now)

    @staticmethod
    def _running_dry(u: Utterance, now: float, within_s: float) -> bool:
        """Everything released is synthesized, and the listener has played it all by
        ``now + within_s``: more audio can only come from text the client has not sent."""
        origin = u.playback_origin()
        return (
            origin is not None
            and u.active is None
            and not u.pending
            and origin + u.produced_ms / 1000.0 <= now + within_s
        )

    def _release(self, u: Utterance, segments: list[str], now: float) -> None:
        if any(text.strip() for text in segments) and self._running_dry(u, now, within_s=0.0):
            u.restart_at_ms = u.produced_ms  # all of it played: the listener waited for text
        for text in segments:
            if not text.strip():
                continue  # whitespace only: nothing to say, no segment, no pause
            index = len(u.segments)
            u.segments.append(text)
            u.pending.append(SegmentJob(u, index, text, now))

    def _cancel(self) -> None:
        u = self.utterance
        if u is None:
            return self._push(SendJson(m.cancelled_message(0.0, "", "")))
        u.live = False
        self.utterance = None
        # Of u's queued items keep only the next frame the listener would have
        # heard (faded out, so playback ends without a click) and the segment
        # event just before it; drop u's later frames, segment events and done.
        tail: list[Outbound] = []
        fade: SendFrame | None = None
        for item in self.outbound:
            if fade is None and _owner(item) is u:
                if isinstance(item, SendFrame):
                    fade = SendFrame(faded(item.frame), u, item.segment)
                tail.append(fade or item)
        self.outbound = deque(item for item in self.outbound if _owner(item) is not u)
        heard, sent_ms = set(u.heard), u.sent_ms
        if fade is not None:
            self.outbound.extend(tail)
            heard.add(fade.segment)
            sent_ms += fade.frame.duration_ms
        spoken = "".join(t for i, t in enumerate(u.segments) if i in heard)
        unspoken = "".join(t for i, t in enumerate(u.segments) if i not in heard)
        unspoken += u.splitter.pending
        self._push(SendJson(m.cancelled_message(sent_ms, spoken.strip(), unspoken.strip()), u))

    def _error(self, code: m.ErrorCode, message: str) -> None:
        self._push(SendJson(m.error_message(m.ProtocolError(code, message))))

    # ------------------------------------------------------------- synthesis
    def next_job(self) -> SegmentJob | None:
        """The next segment to synthesize, or None. Marks it active."""
        u = self.utterance
        if u is None or u.active is not None or not u.pending:
            return None
        u.active = u.pending.popleft()
        if u.first_trigger_at is None:
            u.first_trigger_at = u.active.trigger_at
        return u.active

    @staticmethod
    def job_live(job: SegmentJob) -> bool:
        return job.utterance.live

    def deliver_audio(self, job: SegmentJob, samples: Any, synth_s: float) -> None:
        """Queue frames for a chunk of ``job``'s audio (float32 at the voice's rate)."""
        u = job.utterance
        u.synth_s += synth_s
        if not u.live or len(samples) == 0:
            return
        self._begin_segment(job)
        self._frames(job, u.output.push(samples))

    def finish_job(self, job: SegmentJob, synth_s: float = 0.0) -> None:
        """``job``'s audio is complete."""
        u = job.utterance
        u.synth_s += synth_s
        if not u.live:
            return
        self._begin_segment(job)
        self._frames(job, u.output.end_segment())
        u.active = None
        self._maybe_done(u)

    def fail_job(self, job: SegmentJob, reason: str) -> None:
        """The engine failed on ``job``: report its text as not spoken, go on."""
        u = job.utterance
        if not u.live:
            return
        u.active = None
        u.output.reset()  # a partial frame of the failed segment must not leak into the next
        self._push(
            SendJson(
                {
                    **m.error_message(m.ProtocolError("synthesis_failed", reason)),
                    "segment": job.index,
                    "unspoken_text": job.text.strip(),
                }
            )
        )
        self._maybe_done(u)

    def _begin_segment(self, job: SegmentJob) -> None:
        u = job.utterance
        if job.index in u.started:
            return
        u.started.add(job.index)
        if job.index > 0 and u.produced_ms > 0:  # the pause belongs to the segment before
            # ... to the last one with audio: a segment that failed in between has none,
            # and a pause labelled with it would make cancel report it as spoken.
            before = max(i for i in u.started if i < job.index)
            pause = u.output.silence(pause_after_ms(u.segments[before]))
            self._frames(job, pause, segment=before)
        message = m.segment_message(job.index, job.text.strip(), u.produced_ms)
        self._push(SendJson(message, u))

    def _frames(
        self, job: SegmentJob, frames: list[AudioFrame], segment: int | None = None
    ) -> None:
        index = job.index if segment is None else segment
        for frame in frames:
            job.utterance.produced_ms += frame.duration_ms
            self._push(SendFrame(frame, job.utterance, index))

    def _maybe_done(self, u: Utterance) -> None:
        if u.ended and u.active is None and not u.pending and u.live:
            self._push(SendDone(u))  # the utterance stays current until its done is sent

    def compute_deadline(self, job: SegmentJob, now: float) -> float:
        """Earliest-deadline-first key: when the listener runs out of audio.

        Before the first frame of the utterance: when its text arrived (the
        listener is waiting already; see :meth:`awaiting_first_audio`).
        """
        u = job.utterance
        origin = u.playback_origin()
        if origin is None:
            return job.trigger_at
        return origin + u.produced_ms / 1000.0

    def awaiting_first_audio(self, job: SegmentJob) -> bool:
        """True while the listener of ``job``'s utterance has had no frame yet."""
        return job.utterance.playback_origin() is None

    def compute_wait(self, job: SegmentJob, now: float) -> float:
        """Seconds to wait before computing more of ``job``: bounds audio ahead of playback."""
        u = job.utterance
        origin = u.playback_origin()
        played = (now - origin) * 1000.0 if origin is not None else 0.0
        ahead = u.produced_ms - played
        if u.produced_ms - u.sent_ms > self.limits.max_unsent_ms:
            return 0.05  # the client is not reading: pause until it does
        if not u.settings.realtime:
            return 0.0  # as fast as the engine allows; its deadlines put it behind listeners
        return max(0.0, (ahead - self.limits.lookahead_ms) / 1000.0)

    # ---------------------------------------------------------------- output
    def _push(self, item: Outbound) -> None:
        self.outbound.append(item)

    def pop_outbound(self) -> Outbound | None:
        """Next item to send, or None. Frames count as sent from here."""
        if not self.outbound:
            return None
        item = self.outbound.popleft()
        if isinstance(item, SendFrame):
            item.utterance.sent_ms += item.frame.duration_ms
            item.utterance.heard.add(item.segment)
        elif isinstance(item, SendDone) and self.utterance is item.utterance:
            self.utterance = None
        return item

    def abandon(self) -> None:
        """The connection is going away: stop synthesis for the utterance in progress.

        Nothing more will be sent, so no message is queued. After this,
        :meth:`job_live` is false for every job of that utterance.
        """
        if self.utterance is not None:
            self.utterance.live = False

    def frame_sent(self, item: SendFrame, now: float) -> bool:
        """``item`` was written to the socket at ``now``; True if it was an underrun.

        The listener's playback clock starts at the first frame and plays frames
        back to back; a frame written more than ``UNDERRUN_SLACK_S`` after the
        clock needs it is an underrun, and the clock stalls until it arrives.
        Text that came after the listener had heard everything before it (the
        client paused) restarts the clock at its first frame instead, like the
        first frame of the utterance: the wait was the client's, not an underrun.
        """
        u = item.utterance
        if u.first_frame_at is None:
            u.first_frame_at = now
            return False
        if not u.settings.realtime:
            return False  # nobody plays it as it comes: a late frame is no gap
        origin = u.playback_origin()
        assert origin is not None
        offset_ms = u.sent_ms - item.frame.duration_ms
        late = now - (origin + offset_ms / 1000.0)
        if u.restart_at_ms is not None and offset_ms >= u.restart_at_ms - 1e-6:
            u.restart_at_ms = None
            u.stall_s += max(0.0, late)
            return False
        if late <= UNDERRUN_SLACK_S:
            return False
        u.stall_s += late  # like the listener, wait for the frame, then play on from it
        u.underruns += 1
        return True

    def render_done(self, item: SendDone) -> dict[str, Any]:
        """The ``done`` message for a finished utterance, with its metrics."""
        return m.done_message(utterance_metrics(item.utterance))


def _owner(item: Outbound) -> Utterance | None:
    return item.utterance


def utterance_metrics(u: Utterance) -> dict[str, Any]:
    """TTFT and cost figures of a finished utterance (milliseconds)."""

    def since(t: float | None) -> float | None:
        return (
            None
            if t is None or u.first_frame_at is None
            else round(1000 * (u.first_frame_at - t), 1)
        )

    audio_ms = u.produced_ms
    synth_ms = 1000 * u.synth_s
    return {
        "ttft_ms": since(u.first_trigger_at),
        "ttfa_from_first_text_ms": since(u.first_text_at),
        "audio_ms": round(audio_ms, 1),
        "synth_ms": round(synth_ms, 1),
        "rtf": round(synth_ms / audio_ms, 4) if audio_ms else None,
        "segments": len(u.segments),
        "underruns": u.underruns,
    }
