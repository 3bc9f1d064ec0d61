"""Structured logging: one JSON object per line (or plain text on a terminal)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
#: Extras kopf adds to each of its object log records: its whole OperatorSettings (3 KB of
#: repr per line) and a flag for its own event poster. Not worth a line's CPU.
_DROPPED = {"settings", "k8s_skip"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in _DROPPED and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (every frame, every watch event) stays out unless asked for with
    # HUSKIES_LIBRARY_DEBUG=1: at DEBUG it costs more CPU than the operator's own work.
    if level.upper() != "DEBUG" or os.environ.get("HUSKIES_LIBRARY_DEBUG") != "1":
        # kopf.objects says "Handler ... succeeded" at INFO for every watch event (1,600 lines
        # in a 1,000-story burst); its warnings and errors still show.
        for name in ("websockets", "aiohttp.access", "kopf.objects"):
            logging.getLogger(name).setLevel(logging.WARNING)
