"""firstword client: an async library, a CLI and a load tool for protocol v1.

    from client import TTSClient, Audio, Done

    async with TTSClient("ws://127.0.0.1:8765/v1/tts") as tts:
        async for event in await tts.say("Hello there."):
            ...

``python -m client --help`` (speak to a WAV file or the speakers),
``python -m client.bench --help`` (load test). See ``docs/clients.md``.
"""

from client.errors import TTSConnectionError, TTSError, UtteranceInProgress
from client.events import (
    Audio,
    AudioFormat,
    Cancelled,
    Done,
    Error,
    Event,
    Metrics,
    Ready,
    Segment,
)
from client.retry import RetryPolicy
from client.session import DEFAULT_URL, TTSClient
from client.stream import Stream

__all__ = [
    "DEFAULT_URL",
    "Audio",
    "AudioFormat",
    "Cancelled",
    "Done",
    "Error",
    "Event",
    "Metrics",
    "Ready",
    "RetryPolicy",
    "Segment",
    "Stream",
    "TTSClient",
    "TTSConnectionError",
    "TTSError",
    "UtteranceInProgress",
]
