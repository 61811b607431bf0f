"""Tests for ``python -m client`` (client/cli.py), run as a subprocess against the real server."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import re
import struct
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, RunningServer, free_port
from websockets.asyncio.client import connect

from client.cli import WavWriter

CLI_TIMEOUT_S = 60


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )


def audio_ms(stderr: str) -> int:
    """The server's audio_ms, from the CLI's ``audio 2.80 s`` line (frames are 20 ms)."""
    match = re.search(r"^audio (\d+\.\d+) s", stderr, re.MULTILINE)
    assert match, stderr
    return round(float(match.group(1)) * 1000)


def test_writes_a_wav_whose_length_matches_the_audio(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run_cli("Hello world. How are you today?", "-o", str(out), "--url", server.ws)
    assert result.returncode == 0, result.stderr
    assert re.search(r"TTFT: server \d+\.\d ms; client \d+\.\d ms", result.stderr)
    assert re.search(r"RTF \d\.\d+", result.stderr)
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.getnframes() == audio_ms(result.stderr) * 22050 // 1000
        assert w.getnframes() > 0


def test_reads_stdin_and_decodes_mulaw_to_16_bit(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "phone.wav"
    result = run_cli(
        "-o", str(out), "--url", server.ws, "--format", "mulaw", "--rate", "8000",
        "--tokens", "40",
        stdin="Text from standard input, streamed word by word.\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with wave.open(str(out)) as w:
        assert (w.getsampwidth(), w.getframerate()) == (2, 8000)
        assert w.getnframes() == audio_ms(result.stderr) * 8
        samples = struct.unpack(f"<{w.getnframes()}h", w.readframes(w.getnframes()))
    assert max(map(abs, samples)) > 1000  # speech, not silence


def test_float_output_is_an_ieee_float_wav(server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "float.wav"
    result = run_cli("Floating point.", "-o", str(out), "--url", server.ws, "--format", "pcm_f32le")
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", data[20:36])
    assert (data[:4], data[8:12], tag, channels, rate, align, bits) == (
        b"RIFF",
        b"WAVE",
        3,
        1,
        22050,
        4,
        32,
    )
    samples = audio_ms(result.stderr) * 22050 // 1000
    fact = data.index(b"fact")
    assert struct.unpack("<I", data[fact + 8 : fact + 12])[0] == samples
    body = data.index(b"data")
    assert struct.unpack("<I", data[body + 4 : body + 8])[0] == samples * 4 == len(data) - body - 8
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8


def test_wav_to_stdout(server: RunningServer) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "Piped.", "-o", "-", "--url", server.ws],
        cwd=ROOT,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    with wave.open(io.BytesIO(result.stdout)) as w:
        assert w.getnframes() == audio_ms(result.stderr.decode()) * 22050 // 1000


def test_server_down_is_a_clear_error(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/tts"
    result = run_cli("Hello", "-o", str(tmp_path / "x.wav"), "--url", url, "--retries", "1")
    assert result.returncode == 1 and not (tmp_path / "x.wav").exists()
    assert "cannot connect" in result.stderr and "is the server running" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--voice", "nosuch"], "unknown_voice"),
        (["--rate", "100"], "'sample_rate' must be an integer from 8000 to 48000"),
        (["--speed", "5"], "'speed' must be a number"),
    ],
)
def test_settings_the_server_refuses_are_usage_errors(
    server: RunningServer, tmp_path: Path, flags: list[str], says: str
) -> None:
    result = run_cli("Hello", "-o", str(tmp_path / "x.wav"), "--url", server.ws, *flags)
    assert result.returncode == 2, result.stderr
    assert "refused the settings" in result.stderr and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:8765/v1/tts", "ws://"])
def test_a_url_that_is_not_a_websocket_url_is_a_usage_error(tmp_path: Path, url: str) -> None:
    result = run_cli("Hello", "-o", str(tmp_path / "x.wav"), "--url", url)
    assert result.returncode == 2, result.stderr
    assert "--url must be a ws:// or wss:// URL" in result.stderr


def test_a_full_server_is_not_reported_as_down(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    full = server_factory("--max-sessions", "1")

    async def hold_and_ask() -> subprocess.CompletedProcess[str]:
        async with connect(full.ws) as holder:
            await holder.send('{"type":"start"}')
            await holder.recv()
            return await asyncio.to_thread(
                run_cli, "Hello", "-o", str(tmp_path / "x.wav"), "--url", full.ws, "--retries", "1"
            )

    result = asyncio.run(hold_and_ask())
    assert result.returncode == 1
    assert "1013" in result.stderr and "busy or restarting" in result.stderr, result.stderr
    assert "is the server running" not in result.stderr


def test_play_without_any_sound_output_says_so(tmp_path: Path) -> None:
    if importlib.util.find_spec("sounddevice") is not None:
        pytest.skip("sounddevice is installed here")
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_cli("Hello", "--play", env={"PATH": str(empty)})
    assert result.returncode == 2
    assert "no sound output available" in result.stderr


def fake_player(tmp_path: Path, body: str) -> dict[str, str]:
    """A PATH holding only an ``aplay`` that runs ``body`` (a POSIX shell script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    player = bin_dir / "aplay"
    player.write_text("#!/bin/sh\n" + body + "\n")
    player.chmod(0o755)
    return {"PATH": str(bin_dir)}


def test_play_feeds_the_player_every_sample(server: RunningServer, tmp_path: Path) -> None:
    played = tmp_path / "played.raw"
    env = fake_player(tmp_path, f"exec /bin/cat > {played}")
    result = run_cli("Play this sentence for me.", "--url", server.ws, "--play", env=env)
    assert result.returncode == 0, result.stderr
    assert played.stat().st_size == audio_ms(result.stderr) * 22050 // 1000 * 2


def test_a_player_that_quits_is_one_clear_error(server: RunningServer, tmp_path: Path) -> None:
    env = fake_player(tmp_path, 'echo "Connection failure: Connection refused" >&2; exit 1')
    out = tmp_path / "still.wav"
    result = run_cli("Hello there.", "--url", server.ws, "--play", "-o", str(out), env=env)
    assert result.returncode == 1
    assert "sound output failed: " in result.stderr
    assert "exited with status 1: Connection failure: Connection refused" in result.stderr
    assert result.stderr.count("sound output failed") == 1
    assert "pipe closed" not in result.stderr and "Traceback" not in result.stderr
    with wave.open(str(out)) as w:  # the file is still written in full
        assert w.getnframes() == audio_ms(result.stderr) * 22050 // 1000


def test_usage_errors(tmp_path: Path) -> None:
    assert run_cli("Hello").returncode == 2  # neither -o nor --play
    assert run_cli("-o", str(tmp_path / "x.wav"), stdin="  \n").returncode == 2  # no text


def test_wav_writer_patches_sizes_on_a_pipe_and_on_a_file(tmp_path: Path) -> None:
    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    pipe = Pipe()
    writer = WavWriter(pipe, 8000)
    writer.write(b"\x01\x00" * 80)
    writer.close()
    with wave.open(io.BytesIO(pipe.getvalue())) as w:
        assert (w.getnframes(), w.getframerate()) == (80, 8000)
    with (tmp_path / "f.wav").open("wb") as f:
        writer = WavWriter(f, 16000)
        writer.write(b"\x00\x00" * 10)
        writer.write(b"\x00\x00" * 6)
        writer.close()
    with wave.open(str(tmp_path / "f.wav")) as w:
        assert w.getnframes() == 16
    with pytest.raises(ValueError):
        WavWriter(io.BytesIO(), 8000).write(b"\x00")


def test_writing_a_file_is_not_paced_like_a_listener(server: RunningServer, tmp_path: Path) -> None:
    # ~16 s of speech. A real-time listener gets it ~4 s ahead of playback (a paced file
    # took 12.3 s); a file is written as fast as the server makes it (measured: 1.25 s).
    text = " ".join(
        [
            "The quarterly report shows steady growth in every region we serve.",
            "Customers in the north renewed their contracts at a higher rate than last year.",
            "Our support team answered most calls within two minutes, a new record.",
            "Next quarter we will open two offices and hire twenty more engineers.",
        ]
    )
    out = tmp_path / "fast.wav"
    began = time.monotonic()
    result = run_cli(text, "-o", str(out), "--url", server.ws)
    wall = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    audio_s = audio_ms(result.stderr) / 1000
    assert audio_s > 10, audio_s
    assert wall < audio_s / 2, f"{wall:.1f} s for {audio_s:.1f} s of audio"
    with wave.open(str(out)) as w:
        assert w.getnframes() == audio_ms(result.stderr) * 22050 // 1000
