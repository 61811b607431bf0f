"""An overloaded server counts every underrun and logs where it happened.

One engine worker (``--workers 1``) cannot keep 24 real-time listeners fed
(the engine makes ~13 streams' worth of audio per core: raw limit 27.2 on 2, README), so
underruns are certain; each must show up once in ``/metrics`` and once as an
``underrun`` log line that says which session, segment and moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest
from conftest import RunningServer
from websockets.asyncio.client import ClientConnection, connect
from wsclient import scrape_metrics, send_json, wait_for_metric

pytestmark = pytest.mark.timeout(120)

LISTENERS = 24
TEXT = (
    "Your order has shipped and should arrive on Thursday afternoon. "
    "The courier will text you a delivery window on the morning itself."
)
UNDERRUNS = "firstword_underruns_total"


async def listen(conn: ClientConnection) -> None:
    """Read everything (a real-time player would too; lateness is the server's)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(30):
            async for _ in conn:
                pass


async def test_underruns_are_counted_and_logged(
    server_factory: Callable[..., RunningServer],
) -> None:
    srv = server_factory("--workers", "1", "--urgent-workers", "0")
    conns = [await connect(srv.ws, open_timeout=10) for _ in range(LISTENERS)]
    readers = [asyncio.create_task(listen(c)) for c in conns]
    try:
        for conn in conns:
            await send_json(conn, {"type": "text", "text": TEXT})
            await send_json(conn, {"type": "end"})
        await wait_for_metric(srv.http, UNDERRUNS, lambda v: v > 0, within=30)
    finally:
        for conn in conns:
            await conn.close()
        await asyncio.gather(*readers)
    counted = (await asyncio.to_thread(scrape_metrics, srv.http))[UNDERRUNS]
    lines = [
        json.loads(line.split("firstword: ", 1)[1])
        for line in srv.log().splitlines()
        if '"event": "underrun"' in line
    ]
    assert len(lines) == counted > 0
    for line in lines:
        assert set(line) == {
            "event",
            "session",
            "segment",
            "audio_sent_ms",
            "stall_ms",
            "engine_queue",
        }, line
        assert line["stall_ms"] > 20 and line["audio_sent_ms"] > 0 and line["segment"] >= 0
