"""Single-session TTFT: over the socket vs the engine's own, in one process.

    python -m client.bench_single --url ws://127.0.0.1:8765/v1/tts [--repeats 7]

For each sentence, alternately: (a) the engine in this process (same voice,
one onnxruntime thread, as the server's workers run it): time from calling
``synthesize`` to the first chunk; (b) one WebSocket session: time from
sending the text (whole sentence + ``end``) to the first binary frame, and
the server's own ``ttft_ms``. Medians are printed with the differences.
Run it with the server otherwise idle; both share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import websockets

from engine import Engine

SENTENCES = (
    "Thanks for calling, how can I help you today?",
    "Your order shipped this morning and should arrive on Thursday afternoon.",
    "I have looked up your account and I can see that the last payment arrived on the "
    "third of March, so your next bill will be issued at the end of this month.",
)


def engine_ttfa(engine: Engine, text: str) -> float:
    """Seconds from ``Engine.stream`` (same splitter as the server) to its first chunk."""
    start = time.perf_counter()
    chunks = engine.stream(text)
    next(chunks)
    elapsed = time.perf_counter() - start
    for _ in chunks:
        pass
    return elapsed


async def socket_ttft(url: str, text: str) -> tuple[float, float]:
    """(client seconds to first frame, server ttft_ms / 1000) for one utterance."""
    async with websockets.connect(url, compression=None, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "start"}))
        await asyncio.wait_for(ws.recv(), 10)  # ready
        start = time.perf_counter()
        await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "end"}))
        first: float | None = None
        async with asyncio.timeout(60):
            while True:
                msg = await ws.recv()
                if isinstance(msg, bytes):
                    if first is None:
                        first = time.perf_counter() - start
                    continue
                event = json.loads(msg)
                if event["type"] == "done":
                    assert first is not None
                    return first, event["metrics"]["ttft_ms"] / 1000
                if event["type"] == "error":
                    raise RuntimeError(event["message"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1/tts")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    engine = Engine.load(threads=1)
    heads = ("sentence", "chars", "engine ms", "socket ms", "server ttft", "socket-engine")
    print("{:>8} {:>5} {:>10} {:>10} {:>12} {:>14}".format(*heads))
    for index, text in enumerate(SENTENCES):
        ours, sock, server = [], [], []
        for _ in range(args.repeats):
            ours.append(engine_ttfa(engine, text))
            client, reported = asyncio.run(socket_ttft(args.url, text))
            sock.append(client)
            server.append(reported)
        e, c, s = (1000 * statistics.median(v) for v in (ours, sock, server))
        print(f"{index:>8} {len(text):>5} {e:>10.1f} {c:>10.1f} {s:>12.1f} {c - e:>+14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
