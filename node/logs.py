"""Structured logs of the daemon: text or one JSON object per line, to a file; and following that file.

``configure_logging`` installs one handler on the ``nodeai`` logger (the file)
plus stderr; ``follow_logs`` is what ``nodeai logs -f`` prints from, and it
keeps following across a log rotation or truncation.

Fields passed as ``extra={"job_id": 7, "tx": "0x..."}`` become JSON keys, so
logs can be filtered by job without parsing messages.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["JsonFormatter", "configure_logging", "follow_logs"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        return line + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


def configure_logging(level: str, json_format: bool, file: Path | None, stderr: bool = True) -> None:
    """Route the ``nodeai`` loggers to ``file`` (created with its folder) and optionally stderr."""
    root = logging.getLogger("nodeai")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = False
    formatter: logging.Formatter = JsonFormatter() if json_format else _TextFormatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
        handler.setFormatter(formatter)
        root.addHandler(handler)
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(formatter)
        root.addHandler(console)


def follow_logs(path: Path, *, from_start: bool = False, lines: int = 20, poll: float = 0.25,
                stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield the log's lines as they are written, like ``tail -F``.

    Starts with the last ``lines`` lines (everything with ``from_start``), then
    waits for more; reopens the file when it is replaced (rotation) or
    shrinks (truncation), and waits for it to appear if it does not exist yet.
    Stops when ``stop()`` returns True.
    """
    path = Path(path)
    handle = None
    inode = None
    while not stop():
        if handle is None:
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                time.sleep(poll)
                continue
            inode = os.fstat(handle.fileno()).st_ino
            if not from_start:
                tail = handle.readlines()
                if tail and not tail[-1].endswith(b"\n"):
                    handle.seek(handle.tell() - len(tail.pop()))
                yield from (_text(line) for line in (tail[-lines:] if lines else []))
                from_start = True  # NOTE: a reopened (rotated) file is read from its start
        line = handle.readline()
        if line.endswith(b"\n"):
            yield _text(line)
            continue
        if line:  # NOTE: half a line: the writer is mid-write; come back for the rest
            handle.seek(handle.tell() - len(line))
        time.sleep(poll)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            continue
        if stat.st_ino != inode or stat.st_size < handle.tell():
            handle.close()
            handle = None
    if handle is not None:
        handle.close()


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")
