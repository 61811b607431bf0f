"""Prometheus metrics of the server (one registry per server instance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.ttft = Histogram(
            "firstword_ttft_seconds",
            "Time to first audio frame written, from the message that released the first segment",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.ttfa_text = Histogram(
            "firstword_ttfa_from_first_text_seconds",
            "Time to first audio frame from the first text message",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "firstword_rtf",
            "Synthesis time / audio time per utterance",
            buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0),
            registry=r,
        )
        self.active = Gauge("firstword_active_sessions", "Open WebSocket sessions", registry=r)
        self.frames = Counter(
            "firstword_frames_sent", "Audio frames written to sockets", registry=r
        )
        self.audio_seconds = Counter(
            "firstword_audio_sent_seconds", "Audio written to sockets", registry=r
        )
        self.utterances = Counter(
            "firstword_utterances", "Utterances by outcome", ["outcome"], registry=r
        )
        self.underruns = Counter(
            "firstword_underruns",
            "Frames that left the server after the listener's playback clock needed them",
            registry=r,
        )
        self.errors = Counter(
            "firstword_errors", "Error messages and abnormal closes by code", ["code"], registry=r
        )
        self.queue = Gauge(
            "firstword_engine_queue", "Engine calls waiting for a worker", registry=r
        )
        self.ready = Gauge("firstword_ready", "1 when preloaded and not draining", registry=r)
        # Reliability probes (tests/reliability): synthesized vs sent audio shows that a
        # session whose client does not read stops synthesizing; the task count shows
        # that connections which vanish leave no task behind.
        self.synthesized_seconds = Counter(
            "firstword_audio_synthesized_seconds",
            "Audio computed by the engine (sent or not)",
            registry=r,
        )
        self.tasks = Gauge("firstword_event_loop_tasks", "asyncio tasks alive", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
