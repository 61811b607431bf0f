"""Client-side text pacing: a text source re-cut into pieces the server's rate limit accepts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable


async def once(text: str) -> AsyncGenerator[str, None]:
    yield text


async def coalesce(
    source: AsyncIterable[str], interval_s: float, max_chars: int
) -> AsyncGenerator[str, None]:
    """The text of ``source``, re-cut: at most one piece per ``interval_s``, each <= ``max_chars``.

    Text that arrives within ``interval_s`` of the previous piece is held and
    released when the interval is up, whether or not more text is coming, so
    a pause in the source never delays text already received. No text is
    lost or reordered; empty pieces are skipped. Raises ``TypeError`` if the
    source yields something other than ``str``.
    """
    loop = asyncio.get_running_loop()
    items = aiter(source)
    held: list[str] = []
    held_chars = 0
    last_release = -interval_s
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            if not held_chars:
                await asyncio.wait({pending})
            elif (due := last_release + interval_s - loop.time()) > 0:
                await asyncio.wait({pending}, timeout=due)
            if pending.done():
                try:
                    token = pending.result()
                except StopAsyncIteration:
                    pending = None
                    break
                pending = None
                if not isinstance(token, str):
                    raise TypeError(f"the text source yielded {type(token).__name__}, not str")
                held.append(token)
                held_chars += len(token)
                if loop.time() < last_release + interval_s and held_chars < max_chars:
                    continue  # keep gathering until the interval is up
            if held_chars:
                for piece in cut("".join(held), max_chars):
                    yield piece
                held.clear()
                held_chars = 0
                last_release = loop.time()
        for piece in cut("".join(held), max_chars):
            yield piece
    finally:
        if pending is not None:
            pending.cancel()  # the source sees CancelledError at its await and ends
        closer = getattr(source, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):  # may be running still, ending via the cancel
                await closer()


def cut(text: str, max_chars: int) -> list[str]:
    return [text[i : i + max_chars] for i in range(0, len(text), max_chars)]
