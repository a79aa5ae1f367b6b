"""Logging set-up: key=value lines by default, JSON lines with ``log_format=json``.

Every line, ours and the libraries' (MLflow, urllib3, kafka-python), goes through one handler
whose formatter passes the finished text, tracebacks included, through ``consumers.redact``:
a credential in a URL that an error message echoes never reaches the log.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

from consumers.redact import redact


class RedactingFormatter(logging.Formatter):
    """key=value lines, credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line, credentials masked in the message and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out).decode()


def setup_logging(level: str = "INFO", fmt: str = "kv") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter(
            "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every refused connection at ERROR; the worker logs what matters itself.
    logging.getLogger("kafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
    for noisy in ("alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
