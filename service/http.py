"""Plain HTTP answers on the WebSocket port: health, readiness, metrics, voices, the page."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Response

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"


def response(
    status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
) -> Response:
    reasons = {
        200: "OK",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        503: "Service Unavailable",
    }
    headers = Headers(
        {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
            **(extra or {}),
        }
    )
    return Response(status, reasons.get(status, "OK"), headers, body)


def text(status: int, body: str) -> Response:
    return response(status, (body + "\n").encode(), "text/plain; charset=utf-8")


def json_response(status: int, data: Any) -> Response:
    return response(status, json.dumps(data, indent=1).encode(), "application/json")


def static_file(path: str, root: Path = WEB_ROOT) -> Response:
    """Serve ``path`` from ``root`` (``/`` is ``index.html``); 404 outside it or if missing."""
    relative = path.split("?", 1)[0].lstrip("/") or "index.html"
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return text(404, "not found")
    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return response(200, target.read_bytes(), kind)
