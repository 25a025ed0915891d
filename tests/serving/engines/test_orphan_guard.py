"""The orphan guard: a supervised server's process group dies with its owner, even a SIGKILLed one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from nodeai.serving.engines.orphan_guard import guarded_popen
from nodeai.serving.engines.vllm import _exit_text, process_group_members

# A "server" that forks a worker of its own, as vLLM's API server starts its engine core.
SERVER = "import os, time\nif os.fork() == 0:\n    time.sleep(600)\nelse:\n    time.sleep(600)\n"


def wait_until(check, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_group_dies_when_the_owner_is_sigkilled() -> None:
    owner_code = textwrap.dedent(f"""
        import sys, time
        from nodeai.serving.engines.orphan_guard import guarded_popen
        proc, fd = guarded_popen(sys.executable, [sys.executable, "-c", {SERVER!r}])
        print(proc.pid, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    pgid = 0
    try:
        assert owner.stdout is not None
        pgid = int(owner.stdout.readline())
        # guard, server and the server's worker
        assert wait_until(lambda: len(process_group_members(pgid)) == 3), process_group_members(pgid)
        owner.kill()
        owner.wait()
        assert wait_until(lambda: process_group_members(pgid) == []), process_group_members(pgid)
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
        if pgid and process_group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def test_guard_reports_the_servers_exit_and_stops_when_told() -> None:
    proc, fd = guarded_popen(sys.executable, [sys.executable, "-c", "import sys; sys.exit(3)"])
    try:
        assert proc.wait(timeout=30) == 3
    finally:
        os.close(fd)
    proc, fd = guarded_popen(sys.executable, [sys.executable, "-c", SERVER])
    try:
        assert wait_until(lambda: len(process_group_members(proc.pid)) == 3)
        server = process_group_members(proc.pid, parent=proc.pid)
        assert len(server) == 1
        os.kill(server[0], signal.SIGKILL)  # the server crashes: the guard exits as a shell would report it
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        assert _exit_text(proc.returncode) == "signal SIGKILL"
        assert wait_until(lambda: process_group_members(proc.pid) == [])  # the server's worker went too
    finally:
        os.close(fd)
        if process_group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
