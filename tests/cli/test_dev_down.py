"""``nodeai dev down`` leaves nothing of the local marketplace running, however the demo ends.

The demo here is a stand-in named ``demo.py`` that starts what the real one
starts outside its own Python process: a real anvil (in the demo's process
group) and the real indexer (in a session of its own), each recorded in
``WORKDIR/helpers.pids`` as ``scripts/demo.py`` records them. It then either
ignores SIGTERM (a demo stuck while stopping: it is SIGKILLed), dies on
SIGTERM without stopping its helpers, or is already dead when ``down`` runs.
The real demo's ``dev up``/``dev down`` runs in tests/docs/test_quickstart.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeai.chain.anvil import free_port
from nodeai.cli.dev import PID_FILE, _ours
from nodeai.demo import HELPER_PIDS_FILE, read_helper_pids
from tests.cli.conftest import Chain, run_json

FAKE_DEMO = """
import os, signal, subprocess, sys, time
from pathlib import Path
from nodeai.chain.anvil import Anvil
from nodeai.demo import record_helper_pid

workdir, mode, rpc_url, deployments, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
anvil = Anvil().start()
record_helper_pid(workdir, "anvil", anvil.process.pid)
with open(workdir / "indexer.log", "wb") as log:
    indexer = subprocess.Popen([sys.executable, "-m", "nodeai.indexer", "--deployments", deployments, "--rpc-url", rpc_url,
                                "--db", f"sqlite:///{workdir / 'indexer.db'}", "--confirmations", "0", "--host",
                                "127.0.0.1", "--port", port], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
record_helper_pid(workdir, "indexer", indexer.pid)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stuck" else lambda *_: os._exit(0))
(workdir / "ready").write_text("")
while True:
    time.sleep(1)
"""


@pytest.mark.parametrize("mode", ["stuck", "dies", "dead"])
def test_down_leaves_none_of_the_marketplace_running(chain: Chain, tmp_path: Path, mode: str) -> None:
    workdir = tmp_path / "local"
    workdir.mkdir()
    script = tmp_path / "demo.py"
    script.write_text(FAKE_DEMO)
    demo = subprocess.Popen([sys.executable, str(script), str(workdir), "dies" if mode == "dead" else mode,
                             chain.anvil.url, str(chain.deployments_file), str(free_port())],
                            cwd=workdir, start_new_session=True, stdin=subprocess.DEVNULL)  # fmt: skip
    (workdir / PID_FILE).write_text(f"{demo.pid}\n")
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "ready").exists():
            assert demo.poll() is None and time.monotonic() < deadline, "the stand-in demo did not start"
            time.sleep(0.1)
        pids = [pid for _, pid in read_helper_pids(workdir)]
        assert [name for name, _ in read_helper_pids(workdir)] == ["anvil", "indexer"]
        assert all(_ours(pid) for pid in [demo.pid, *pids])
        if mode == "dead":
            os.kill(demo.pid, signal.SIGKILL)  # NOTE: killed before `down`: it stopped nothing
            demo.wait(timeout=10)

        data = run_json("dev", "down", "--workdir", str(workdir), "--timeout", "2s")
        assert data["action"] == {"stuck": "killed", "dies": "stopped", "dead": "none"}[mode]
        still = [pid for pid in [demo.pid, *pids] if _ours(pid)]
        assert still == [], f"still running after `nodeai dev down`: {still}"
        assert (workdir / HELPER_PIDS_FILE).is_file()
    finally:
        for pid in [demo.pid, *pids]:
            if _ours(pid):
                os.kill(pid, signal.SIGKILL)
        demo.wait(timeout=10)
