"""Keep plain HTTP exchanges (health probes, metrics scrapes, page files) out of the log.

websockets logs two INFO lines for every HTTP request it answers without a
WebSocket upgrade ("HTTP response sent (200 OK)", "connection closed"); with
Kubernetes probing ``/readyz`` and ``/healthz`` and Prometheus scraping
``/metrics`` those lines drown everything else. This filter drops them at
INFO and below; a refused handshake is logged by the server itself with its
reason, and anything websockets logs at WARNING or above still passes.
"""

from __future__ import annotations

import logging

SWITCHING_PROTOCOLS = 101


class DropPlainHttp(logging.Filter):
    """A logger filter: False for INFO-or-lower records of connections that never upgraded."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        connection = getattr(record, "websocket", None)  # set by websockets' LoggerAdapter
        response = getattr(connection, "response", None)
        status = getattr(response, "status_code", None)
        return status is None or status == SWITCHING_PROTOCOLS


def install(logger_name: str = "websockets.server") -> None:
    """Attach :class:`DropPlainHttp` to ``logger_name``."""
    logging.getLogger(logger_name).addFilter(DropPlainHttp())
