"""A transformers VITS voice through the real server, beside the default Piper voice.

One server serves this module: ``--voices`` holds a tiny random-weight VITS
checkpoint (``engine.vits_tiny``) and a half-copied one (no weights). The
server must start, list and serve both good voices, and log why the broken
one was not loaded. Every wait is bounded (see ``wsclient``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import IN_CI, RunningServer, http_get, start_server

if not IN_CI:  # a light dev install skips; CI must have requirements-vits.txt installed
    pytest.importorskip("torch")
    pytest.importorskip("transformers")

from wsclient import check_utterance, speak

from engine.codecs import decode
from engine.vits_tiny import build_tiny_vits

pytestmark = pytest.mark.timeout(120)

VITS = "mms-tts-tiny"
BROKEN = "mms-tts-broken"
PIPER = "en_US-joe-medium"
TEXT = "Hello there. How are you today?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    voices = tmp_path_factory.mktemp("voices")
    build_tiny_vits(voices / VITS)
    shutil.copytree(voices / VITS, voices / BROKEN)
    (voices / BROKEN / "model.safetensors").unlink()
    env = {
        "HF_HUB_OFFLINE": "1",
        "FIRSTWORD_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
    }
    s = start_server(tmp_path_factory.mktemp("server"), "--voices", str(voices), env=env)
    yield s
    s.stop()


def test_voices_lists_both_backends(server: RunningServer) -> None:
    status, body = http_get(server.http + "/v1/voices")
    assert status == 200
    answer = json.loads(body)
    assert answer["default"] == PIPER
    voices = {v["name"]: v for v in answer["voices"]}
    assert set(voices) == {PIPER, VITS}
    assert voices[VITS] == {
        "name": VITS,
        "language": "eng",
        "sample_rate": 16000,
        "backend": "transformers-vits",
        "streaming": True,
    }
    assert voices[PIPER]["backend"] == "piper"
    assert voices[PIPER]["sample_rate"] == 22050


def test_broken_checkpoint_is_logged_clearly(server: RunningServer) -> None:
    log = server.log()
    lines = [line for line in log.splitlines() if f"voice {BROKEN} not loaded" in line]
    assert len(lines) == 1, log
    assert f"{BROKEN}: not a complete transformers VITS checkpoint" in lines[0]
    assert "missing model.safetensors" in lines[0]
    assert f"engine: {VITS} loaded in" in log


async def test_vits_voice_streams_at_its_native_rate(server: RunningServer) -> None:
    got = await speak(server.ws, TEXT, {"voice": VITS})
    ready = got.one("ready")
    assert (ready["voice"], ready["sample_rate"]) == (VITS, 16000)
    metrics = check_utterance(got, rate=16000)
    assert metrics["segments"] == 2
    assert len(got.frames) >= 3  # streamed in frames, not one blob
    samples = decode(b"".join(got.frames), "pcm_s16le")
    assert np.max(np.abs(samples)) > 0.01, "the audio is silent"


async def test_vits_voice_is_resampled_to_what_the_client_asks(server: RunningServer) -> None:
    native = check_utterance(await speak(server.ws, TEXT, {"voice": VITS}), rate=16000)
    got = await speak(server.ws, TEXT, {"voice": VITS, "sample_rate": 48000})
    assert got.one("ready")["sample_rate"] == 48000
    metrics = check_utterance(got, rate=48000)
    # Noise makes durations differ between runs; the rate must not change them 3x.
    assert 0.5 < metrics["audio_ms"] / native["audio_ms"] < 2.0


async def test_default_piper_voice_still_serves(server: RunningServer) -> None:
    got = await speak(server.ws, TEXT)
    assert got.one("ready")["voice"] == PIPER
    check_utterance(got, rate=22050)
