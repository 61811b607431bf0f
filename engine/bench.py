"""Engine benchmark: time to first audio and RTF, ours vs piper, in one process.

    python -m engine.bench [--repeats 5] [--threads 0] [--json out.json]

Both engines load the same voice file with the same onnxruntime thread count
(``--threads 0`` = onnxruntime's default, which is what ``PiperVoice.load``
uses). Runs are interleaved (ours, piper, ours, ...) so machine noise hits
both alike; medians and ratios ours/piper are printed. Piper's
``synthesize`` returns a whole sentence at once, so its time to first audio
is its full synthesis time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

SHORT = [
    "Your order has shipped today.",
    "Please hold while I check that for you.",
    "The meeting starts at nine in the morning.",
    "Thanks for calling, how can I help you?",
    "Your balance is forty two dollars and ten cents.",
]
LONG = [
    "I have looked up your account and I can see that the last payment arrived on the "
    "third of March, so your next bill will be issued at the end of this month.",
    "If you would like to change your delivery address, please tell me the new street, "
    "the city and the postal code, and I will update the order right away for you.",
    "Our support team is available every day from eight in the morning until ten at "
    "night, and outside those hours you can always leave a message for a call back.",
    "The weather service expects heavy rain across the northern region tomorrow "
    "afternoon, with strong winds near the coast and cooler temperatures overnight.",
    "Before we continue, I need to confirm your identity, so could you please read me "
    "the last four digits of the card that is linked to this particular account?",
]


def _first_and_total(
    chunks: Callable[[], Iterator[np.ndarray[Any, Any]]],
) -> tuple[float, float, int]:
    """Seconds to the first chunk, seconds to the end, and samples produced."""
    start = time.perf_counter()
    first = None
    samples = 0
    for audio in chunks():
        if first is None:
            first = time.perf_counter() - start
        samples += len(audio)
    return first or 0.0, time.perf_counter() - start, samples


def run(repeats: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort
    from piper import PiperVoice

    from engine import Engine
    from engine.piper_voice import session_options
    from engine.voice_files import default_voice_files

    files = default_voice_files()
    Engine.load(threads=threads)  # make sure the split cache exists
    load_start = time.perf_counter()
    engine = Engine.load(threads=threads)
    load_s = time.perf_counter() - load_start
    voice = engine.voice()
    rate = voice.sample_rate

    def ours(text: str) -> Callable[[], Iterator[np.ndarray[Any, Any]]]:
        return lambda: voice.synthesize(text, 1.0)

    def ours_stream(text: str) -> Callable[[], Iterator[np.ndarray[Any, Any]]]:
        return lambda: (c.audio for c in engine.stream(text))

    first_call = _first_and_total(ours(SHORT[0]))[0]
    piper = PiperVoice.load(str(files.model))
    if threads:  # same onnxruntime threads for both, or the ratio measures the thread count
        piper.session = ort.InferenceSession(
            str(files.model), session_options(threads), providers=["CPUExecutionProvider"]
        )

    def theirs(text: str) -> Callable[[], Iterator[np.ndarray[Any, Any]]]:
        return lambda: (c.audio_float_array for c in piper.synthesize(text))

    for text in SHORT[:2]:  # warm piper too: the comparison is steady state vs steady state
        _first_and_total(theirs(text))
    report: dict[str, Any] = {"load_s": load_s, "threads": threads, "groups": {}}
    steady_first = []
    for group, texts in (("short", SHORT), ("long", LONG)):
        rows: dict[str, list[float]] = {
            k: [] for k in ("ours_ttfa", "stream_ttfa", "piper_ttfa", "ours_rtf", "piper_rtf")
        }
        for _ in range(repeats):
            for text in texts:
                f, t, n = _first_and_total(ours(text))
                rows["ours_ttfa"].append(f)
                rows["ours_rtf"].append(t / (n / rate))
                if text == SHORT[0]:
                    steady_first.append(f)
                rows["stream_ttfa"].append(_first_and_total(ours_stream(text))[0])
                f, t, n = _first_and_total(theirs(text))
                rows["piper_ttfa"].append(f)
                rows["piper_rtf"].append(t / (n / rate))
        med = {k: statistics.median(v) for k, v in rows.items()}
        report["groups"][group] = {
            **med,
            "ttfa_ratio": med["ours_ttfa"] / med["piper_ttfa"],
            "stream_ttfa_ratio": med["stream_ttfa"] / med["piper_ttfa"],
            "rtf_ratio": med["ours_rtf"] / med["piper_rtf"],
            "chars": [min(map(len, texts)), max(map(len, texts))],
        }
    report["first_call_ttfa_s"] = first_call
    report["steady_ttfa_s"] = statistics.median(steady_first)
    report["first_call_ratio"] = first_call / report["steady_ttfa_s"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds over each sentence set")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = its default)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    report = run(args.repeats, args.threads)
    print(f"Engine.load() with warm cache: {report['load_s']:.2f} s (threads={args.threads})")
    print(
        f"{'set':6} {'chars':>9} {'TTFA ours':>10} {'TTFA piper':>11} {'ratio':>6} "
        f"{'RTF ours':>9} {'RTF piper':>10} {'ratio':>6}"
    )
    for group, g in report["groups"].items():
        print(
            f"{group:6} {g['chars'][0]:>4}-{g['chars'][1]:<4} {1000 * g['ours_ttfa']:>8.1f}ms "
            f"{1000 * g['piper_ttfa']:>9.1f}ms {g['ttfa_ratio']:>6.2f} {g['ours_rtf']:>9.3f} "
            f"{g['piper_rtf']:>10.3f} {g['rtf_ratio']:>6.2f}"
        )
    print("TTFA of Engine.stream (the splitter may end a long first sentence early at a clause):")
    for group, g in report["groups"].items():
        print(
            f"{group:6} {1000 * g['stream_ttfa']:>8.1f}ms, "
            f"{g['stream_ttfa_ratio']:.2f}x piper's whole-sentence time"
        )
    print(
        f"first stream() after load: {1000 * report['first_call_ttfa_s']:.1f} ms to first audio, "
        f"{report['first_call_ratio']:.2f}x the steady state "
        f"({1000 * report['steady_ttfa_s']:.1f} ms)"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
