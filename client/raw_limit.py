"""The machine's raw synthesis limit in real-time streams, measured without a server."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from client.load_texts import TEXTS


def raw_limit(duration_s: float, threads: int | None = None) -> dict[str, Any]:
    """The machine's raw limit: one-shot synthesis throughput, in real-time streams.

    No server and no streaming: one thread per core (or ``threads``), each
    running piper's own ``PiperVoice.synthesize`` (the whole sentence in one
    onnxruntime call, one intra-op thread per call) over ``TEXTS`` until
    ``duration_s`` has passed. Real-time streams = audio seconds produced /
    wall seconds. Pauses are not counted: this is what the model itself yields.
    """
    import onnxruntime as ort  # heavy: only for --raw-limit
    from piper import PiperVoice

    from engine.piper_voice import session_options
    from engine.voice_files import default_voice_files

    files = default_voice_files()
    voice = PiperVoice.load(str(files.model))
    voice.session = ort.InferenceSession(
        str(files.model), session_options(1), providers=["CPUExecutionProvider"]
    )
    rate = voice.config.sample_rate
    for _ in voice.synthesize("Warm up."):
        pass
    count = threads or os.cpu_count() or 1
    audio_s = [0.0] * count
    started = time.perf_counter()
    deadline = started + duration_s

    def work(slot: int) -> None:
        turn = slot
        while time.perf_counter() < deadline:
            for chunk in voice.synthesize(TEXTS[turn % len(TEXTS)]):
                audio_s[slot] += len(chunk.audio_float_array) / rate
                if time.perf_counter() >= deadline:
                    break
            turn += 1

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=duration_s + 120.0)
    wall_s = time.perf_counter() - started
    total = sum(audio_s)
    return {
        "threads": count,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 2),
        "audio_s": round(total, 2),
        "streams": round(total / wall_s, 2),
    }
