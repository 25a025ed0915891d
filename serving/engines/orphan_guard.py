"""Stop a supervised server's whole process group when the process that owns it dies, even by SIGKILL.

The owner (``guarded_popen``) starts ``python orphan_guard.py FD -- COMMAND...``
in a new session, keeping the write end of a pipe whose read end is FD. The
guard starts COMMAND as its child (same process group) and blocks reading
FD. When the owner dies, however it dies, the kernel closes the write end,
the read returns end-of-file, and the guard stops the group: SIGTERM, then
SIGKILL after a grace period. While the owner lives, the guard exits with
its child's exit status (after a SIGTERM to what the child left in the
group), so a crash of the server is seen as before.

# NOTE: PR_SET_PDEATHSIG was not used: it fires when the *thread* that
# forked dies (the supervisor's restart thread, not the process), and it
# reaches only the direct child, not vLLM's engine-core processes.

This file imports only the standard library: the guard runs under the
server's own interpreter (vLLM's environment), found by path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["guarded_popen", "GUARD_SCRIPT"]

GUARD_SCRIPT = Path(__file__).resolve()
GRACE_S = 10.0


def guarded_popen(python: str | os.PathLike[str], command: Sequence[str], **popen_kwargs: Any) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command`` under the guard, run by ``python``, in a new session (its pid is the group id).

    Returns the guard's Popen and the pipe's write end: keep it open while the
    server should live; closing it (or dying) stops the whole group.
    """
    read_fd, write_fd = os.pipe()  # NOTE: non-inheritable: no other child of ours keeps the write end
    try:
        proc = subprocess.Popen(
            [str(python), "-P", str(GUARD_SCRIPT), str(read_fd), "--", *command],
            pass_fds=(read_fd,), start_new_session=True, **popen_kwargs,
        )  # fmt: skip
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return proc, write_fd


def _stop_group(child: subprocess.Popen[bytes]) -> None:
    # NOTE: the group's SIGTERM reaches the guard too; its handler (forward) only passes it on.
    os.killpg(0, signal.SIGTERM)
    os.killpg(0, signal.SIGCONT)  # NOTE: a stopped (hung) process acts on SIGTERM only once continued
    deadline = time.monotonic() + GRACE_S
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)  # NOTE: also ends the guard and any worker left behind


def _main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: orphan_guard.py FD -- COMMAND...", file=sys.stderr)
        return 2
    fd = int(argv[0])
    child = subprocess.Popen(argv[2:], stdin=subprocess.DEVNULL)

    def forward(signum: int, frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def watch_owner() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        if child.poll() is None:
            print("orphan_guard: the owner is gone; stopping the server's process group", file=sys.stderr, flush=True)
            _stop_group(child)

    threading.Thread(target=watch_owner, daemon=True).start()
    code = child.wait()
    # NOTE: what the server started (vLLM's engine core) must not outlive it; the
    # guard's own SIGTERM handler only passes signals on, so it survives this.
    os.killpg(0, signal.SIGTERM)
    # NOTE: a child killed by signal N reads as exit status 128 + N, as a shell reports it.
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
