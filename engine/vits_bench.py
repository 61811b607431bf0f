"""transformers VITS benchmark: time to first audio, ours vs ``model(**inputs).waveform``.

    python -m engine.vits_bench                      # tiny random model (seconds)
    python -m engine.vits_bench --mms-shaped         # random weights, MMS-TTS architecture
    python -m engine.vits_bench --model DIR          # a real checkpoint folder, e.g. mms-tts-eng
    python -m engine.vits_bench --mms-shaped --stages --runtime both   # the runtime figures

Ours is ``VitsStreamingVoice.synthesize`` (tokenize, frontend, then flow and
decoder in chunks); its time to first audio ends at the first chunk. Theirs
is the tokenizer plus one ``model(**inputs).waveform`` call on the same model
object in the same process, noise as configured, so its time to first audio
is its whole synthesis. Runs are interleaved (ours, theirs, ours, ...) with
the same torch / onnxruntime thread count; medians are printed.

``--mms-shaped`` writes a checkpoint with the default ``VitsConfig`` (the
MMS-TTS architecture, 36 M parameters) and random weights: the compute of a
real MMS voice without a download. Its random duration predictor gives ~1.3
frames per token, a real one ~4, so its speaking rate is set to 0.33 to get
real MMS lengths. ``--stages`` also times the decoder and the flow alone,
per window length, on both runtimes, including the first call at a new
window length. Nothing here downloads: ``--model`` must be a local folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = {
    "short": "Your order has shipped today.",
    "medium": "Please hold while I check the details of your account for you.",
    "long": (
        "I have looked up your account and I can see that the last payment arrived on "
        "the third of March, so your next bill will be issued at the end of this month."
    ),
}


def build_mms_shaped(folder: Path) -> Path:
    """A random-weight checkpoint with the MMS-TTS architecture and realistic lengths."""
    import json

    from engine.vits_tiny import VOCAB, build_tiny_vits

    build_tiny_vits(folder)  # for the tokenizer files
    import torch
    from transformers.models.vits.configuration_vits import VitsConfig
    from transformers.models.vits.modeling_vits import VitsModel

    torch.manual_seed(0)
    config = VitsConfig(vocab_size=len(VOCAB), speaking_rate=0.33, pad_token_id=0)
    model: Any = VitsModel(config)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(str(folder))
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 192
    return folder


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _call_ms(call: Callable[[Any], Any], argument: Any) -> float:
    start = time.perf_counter()
    call(argument)
    return 1000 * (time.perf_counter() - start)


def compare(voice: Any, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms to first audio (ours, theirs) and audio seconds per sentence."""
    import torch

    tokenizer, model = voice.text.tokenizer, voice.stages.model
    rows: dict[str, dict[str, float]] = {}
    for name, text in SENTENCES.items():
        ours, theirs, totals, seconds = [], [], [], 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            chunks = voice.synthesize(text)
            first = next(chunks)
            ours.append(time.perf_counter() - start)
            samples = len(first) + sum(len(c) for c in chunks)
            totals.append(time.perf_counter() - start)
            start = time.perf_counter()
            inputs = tokenizer(text, return_tensors="pt")
            with torch.inference_mode():
                waveform = model(**inputs).waveform
            theirs.append(time.perf_counter() - start)
            seconds = max(samples, waveform.shape[-1]) / voice.sample_rate
        rows[name] = {
            "chars": len(text),
            "audio_s": seconds,
            "ours_ms": 1000 * statistics.median(ours),
            "ours_total_ms": 1000 * statistics.median(totals),
            "theirs_ms": 1000 * statistics.median(theirs),
        }
    return rows


def stage_costs(voice: Any, repeats: int) -> list[str]:
    """Decoder and flow alone, onnxruntime vs torch, calls interleaved (medians, ms).

    Also the first call at a window length never seen before, minus the
    second call at that length: what a new shape costs each runtime.
    """
    import numpy as np
    import torch

    if voice.onnx is None:
        return ["  --stages needs the onnxruntime runtime (it times both runtimes)"]
    stages = voice.stages
    flow_session, decoder_session = voice.onnx.flow_session, voice.onnx.decoder_session
    speaker = stages._speaker()
    g = None if speaker is None else speaker.numpy()

    def feed(z: Any) -> dict[str, Any]:
        return {"latents": z} if g is None else {"latents": z, "speaker": g}

    calls: dict[str, Callable[[Any], Any]] = {
        "decoder onnxruntime": lambda z: decoder_session.run(None, feed(z)),
        "decoder torch": lambda z: stages.decoder(torch.from_numpy(z), speaker),
        "flow onnxruntime": lambda z: flow_session.run(None, feed(z)),
        "flow torch": lambda z: stages.flow(torch.from_numpy(z), speaker),
    }
    rng = np.random.default_rng(0)

    def latents(frames: int) -> Any:
        shape = (1, int(stages.config.flow_size), frames)
        return rng.normal(0, 0.5, shape).astype(np.float32)

    lines = [f"  stage costs, {torch.get_num_threads()} thread(s), medians of {repeats}:"]
    for frames in (38, 64, 101, 156):
        z = latents(frames)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                times[name].append(_call_ms(call, z))
        cells = [f"{name} {statistics.median(t):7.1f}" for name, t in times.items()]
        lines.append(f"  {frames:4} frames: " + ", ".join(cells))
    penalty: dict[str, list[float]] = {name: [] for name in calls if name.startswith("decoder")}
    for frames in (41, 47, 53, 59, 67, 73, 79, 83):  # lengths no earlier call used
        z = latents(frames)
        for name in penalty:
            first = _call_ms(calls[name], z)
            penalty[name].append(first - _call_ms(calls[name], z))
    cells = [f"{name} {statistics.median(p):+.1f}" for name, p in penalty.items()]
    lines.append("  first call at a new length, minus the second: " + ", ".join(cells))
    ids = voice.text.ids(SENTENCES["medium"])
    front = _median_ms(
        lambda: stages.frontend(
            ids, speaking_rate=voice.speaking_rate, noise_scale=0.667, noise_scale_duration=0.8
        ),
        repeats,
    )
    lines.append(f"  frontend (torch), {len(ids)} ids: {front:.1f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="a local transformers VITS checkpoint folder")
    source.add_argument("--mms-shaped", action="store_true", help="random MMS-sized weights")
    parser.add_argument(
        "--runtime", choices=["onnxruntime", "torch", "both"], default="onnxruntime"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", action="store_true", help="also time flow and decoder alone")
    args = parser.parse_args(argv)

    from engine.vits_files import vits_files
    from engine.vits_tiny import build_tiny_vits
    from engine.vits_voice import Runtime, VitsStreamingVoice

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is not None:
            folder = args.model
        elif args.mms_shaped:
            folder = build_mms_shaped(Path(tmp) / "mms-shaped")
        else:
            folder = build_tiny_vits(Path(tmp) / "tiny")
        runtimes: list[Runtime] = (
            ["onnxruntime", "torch"] if args.runtime == "both" else [args.runtime]
        )
        for runtime in runtimes:
            start = time.perf_counter()
            voice = VitsStreamingVoice.load(
                vits_files(folder),
                cache_dir=Path(tmp) / "cache",
                threads=args.threads,
                runtime=runtime,
            )
            load_s = time.perf_counter() - start
            loads = ", ".join(f"{k} {v:.2f}" for k, v in voice.load_seconds.items())
            print(f"{folder.name}: {voice.runtime}, threads {args.threads}, load {load_s:.2f} s")
            mode = "chunked" if voice.streaming else f"whole segments ({voice.fallback_reason})"
            print(f"  ({loads}); {mode}; schedule {voice.schedule}")
            print(f"  verify max diff {voice.verify_max_diff}")
            print(
                f"  {'sentence':8} {'chars':>5} {'audio':>6} {'TTFA ours':>10} "
                f"{'one-shot':>9} {'ratio':>6} {'ours total':>11}"
            )
            for name, r in compare(voice, args.repeats).items():
                print(
                    f"  {name:8} {r['chars']:5.0f} {r['audio_s']:5.2f}s {r['ours_ms']:8.1f}ms "
                    f"{r['theirs_ms']:7.1f}ms {r['ours_ms'] / r['theirs_ms']:6.2f} "
                    f"{r['ours_total_ms']:9.1f}ms"
                )
            if args.stages:
                print("\n".join(stage_costs(voice, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
