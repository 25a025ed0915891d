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
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from nodeai.ipfs import EmbeddedKuboStore

JSIPFS_DIR = Path(__file__).parent / "jsipfs"
JSIPFS_CLI = JSIPFS_DIR / "node_modules" / "ipfs" / "src" / "cli.js"
_START_TIMEOUT_S = 45.0


@pytest.fixture(scope="session")
def node_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nodeai-ipfs-test-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def publisher(node_root: Path) -> Iterator[EmbeddedKuboStore]:
    with EmbeddedKuboStore(node_root / "publisher") as store:
        yield store


@pytest.fixture(scope="session")
def provider(node_root: Path, publisher: EmbeddedKuboStore) -> Iterator[EmbeddedKuboStore]:
    with EmbeddedKuboStore(node_root / "provider") as store:
        store.connect(publisher.multiaddrs()[0])
        yield store


# NOTE: only what the test profile leaves open is set: every listener on
# 127.0.0.1 with a random port (its gRPC port is fixed), no bootstrap peers,
# no delegated routing, no mDNS or WebRTC-star discovery.
_JSIPFS_CONFIG = {
    "Addresses": {"API": "/ip4/127.0.0.1/tcp/0", "RPC": "/ip4/127.0.0.1/tcp/0",
                  "Gateway": "/ip4/127.0.0.1/tcp/0", "Swarm": ["/ip4/127.0.0.1/tcp/0"], "Delegates": []},
    "Bootstrap": [],
    "Discovery": {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}},
}


@dataclass(frozen=True)
class JsIpfsDaemon:
    api_url: str
    repo: Path


class _JsIpfsLauncher:
    """Starts the daemon as soon as tests needing it are collected, so its slow
    start (Node.js loading ~1,000 modules) overlaps the tests that run first."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nodeai-jsipfs-"))
        self.repo = self.root / "repo"
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""
        self.url = ""
        node = shutil.which("node")
        if node is None or not JSIPFS_CLI.exists():
            self.error = (f"the js-ipfs daemon is not installed ({JSIPFS_CLI} missing, or no `node` on PATH): "
                          "run `npm ci --prefix tests/ipfs/jsipfs` in the repository root")
            return
        (self.root / "init.json").write_text(json.dumps(_JSIPFS_CONFIG))
        env = dict(os.environ, IPFS_PATH=str(self.repo), NODE_ENV="test", NO_UPDATE_NOTIFIER="1", DEBUG="")
        self._log = (self.root / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [node, str(JSIPFS_CLI), "daemon", "--init-profile", "test", "--init-config", str(self.root / "init.json"),
             "--enable-preload=false"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self) -> JsIpfsDaemon:
        if self.proc is None:
            pytest.fail(self.error)
        api_file = self.repo / "api"
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.url:
            if api_file.exists() and api_file.read_text().strip():
                parts = api_file.read_text().strip().split("/")  # /ip4/127.0.0.1/tcp/PORT/http
                self.url = f"http://{parts[2]}:{parts[4]}"
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "daemon.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"the js-ipfs daemon did not start within {_START_TIMEOUT_S:g} s:\n{log}")
            else:
                time.sleep(0.1)
        return JsIpfsDaemon(self.url, self.repo)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                if self.url:
                    httpx.post(f"{self.url}/api/v0/shutdown", timeout=5.0)
                self.proc.wait(timeout=10)
            except (httpx.HTTPError, subprocess.TimeoutExpired):
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)


_launcher: _JsIpfsLauncher | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _launcher
    # NOTE: under pytest-xdist every worker collects every test but runs only
    # some: there the daemon starts when a worker first needs it.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any("jsipfs" in getattr(item, "fixturenames", ()) for item in session.items):
        _launcher = _JsIpfsLauncher()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _launcher is not None:
        _launcher.stop()


@pytest.fixture(scope="session")
def jsipfs() -> Iterator[JsIpfsDaemon]:
    """A running js-ipfs daemon: its RPC API URL on 127.0.0.1 and its repo folder."""
    global _launcher
    if _launcher is None:  # NOTE: requested without being collected first (a plugin's dynamic use)
        _launcher = _JsIpfsLauncher()
    yield _launcher.wait()
    _launcher.stop()
