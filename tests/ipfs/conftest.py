"""Fixtures for the artifact-store tests: real IPFS nodes on loopback only.

* ``publisher`` / ``provider``: two in-process kubo nodes (EmbeddedKuboStore),
  each with its own temporary repo, listening on 127.0.0.1 with no bootstrap
  peers; the provider is connected to the publisher by multiaddr.
* ``jsipfs_api``: a js-ipfs 0.66 daemon (a separate Node.js process serving
  the kubo-compatible RPC API) in a temporary repo, random loopback ports,
  no bootstrap, no preload, no mDNS. Installed from ``tests/ipfs/jsipfs``
  (``npm ci`` there; see its package.json for why).

Every node is closed and every temporary repo removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nodeai.ipfs import EmbeddedKuboStore

JSIPFS_DIR = Path(__file__).parent / "jsipfs"
JSIPFS_CLI = JSIPFS_DIR / "node_modules" / "ipfs" / "src" / "cli.js"
_START_TIMEOUT_S = 45.0


@pytest.fixture(scope="module")
def node_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nodeai-ipfs-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def publisher(node_root: Path) -> Iterator[EmbeddedKuboStore]:
    with EmbeddedKuboStore(node_root / "publisher") as store:
        yield store


@pytest.fixture(scope="module")
def provider(node_root: Path, publisher: EmbeddedKuboStore) -> Iterator[EmbeddedKuboStore]:
    with EmbeddedKuboStore(node_root / "provider") as store:
        store.connect(publisher.multiaddrs()[0])
        yield store


def _jsipfs_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(IPFS_PATH=str(repo), NODE_ENV="test", NO_UPDATE_NOTIFIER="1", DEBUG="")
    return env


@pytest.fixture(scope="session")
def jsipfs_api() -> Iterator[str]:
    """URL of a running js-ipfs daemon's RPC API on 127.0.0.1."""
    node = shutil.which("node")
    if node is None or not JSIPFS_CLI.exists():
        pytest.fail(
            f"the js-ipfs daemon is not installed ({JSIPFS_CLI} missing, or no `node` on PATH): "
            "run `npm ci --prefix tests/ipfs/jsipfs` in the repository root"
        )
    root = Path(tempfile.mkdtemp(prefix="nodeai-jsipfs-"))
    repo = root / "repo"
    env = _jsipfs_env(repo)
    subprocess.run([node, str(JSIPFS_CLI), "init", "--profile", "test"], env=env, check=True,
                   capture_output=True, timeout=_START_TIMEOUT_S)
    config_file = repo / "config"
    config = json.loads(config_file.read_text())
    # NOTE: the test profile already listens on 127.0.0.1:0 with no bootstrap
    # or mDNS; the gRPC port is fixed there, so make it random too.
    config["Addresses"]["RPC"] = "/ip4/127.0.0.1/tcp/0"
    config["Addresses"]["Gateway"] = "/ip4/127.0.0.1/tcp/0"
    config["Addresses"]["API"] = "/ip4/127.0.0.1/tcp/0"
    config["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    config["Addresses"]["Delegates"] = []
    config["Bootstrap"] = []
    config_file.write_text(json.dumps(config))
    log = (root / "daemon.log").open("wb")
    proc = subprocess.Popen([node, str(JSIPFS_CLI), "daemon", "--enable-preload=false"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        api_file = repo / "api"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not api_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"js-ipfs daemon did not start: {(root / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.1)
        parts = api_file.read_text().strip().split("/")  # /ip4/127.0.0.1/tcp/PORT/http
        url = f"http://{parts[2]}:{parts[4]}"
        yield url
    finally:
        try:
            httpx.post(f"{url}/api/v0/shutdown", timeout=5.0) if "url" in locals() else None
            proc.wait(timeout=10)
        except (httpx.HTTPError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)
