"""A local anvil chain as a context manager: free loopback port, no disk state, always stopped.

anvil comes from the npm package ``@foundry-rs/anvil-linux-amd64`` (installed
by ``npm install`` in the repository root). It runs with
``--max-persisted-states 0`` (otherwise it writes ~80 MB per 1,000 blocks
into ~/.foundry) and with HOME pointed at a temporary folder, so nothing is
left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from nodeai.chain.artifacts import REPO_ROOT
from nodeai.errors import AnvilNotFound, ToolError

# NOTE: anvil's default mnemonic ("test test ... junk"); its accounts are
# public knowledge and hold ETH only on local chains.
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
LOCAL_CHAIN_ID = 31337


def find_anvil() -> str:
    candidates = [os.environ.get("NODEAI_ANVIL"), str(REPO_ROOT / "node_modules" / ".bin" / "anvil"), shutil.which("anvil")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise AnvilNotFound(", ".join(c for c in candidates if c))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Anvil:
    """Runs ``anvil`` on 127.0.0.1 until ``stop()`` (or the end of a ``with`` block)."""

    def __init__(self, chain_id: int = LOCAL_CHAIN_ID, block_time: float | None = None, accounts: int = 10,
                 extra_args: tuple[str, ...] = ()):
        self.chain_id = chain_id
        self.block_time = block_time
        self.accounts = accounts
        self.extra_args = extra_args
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._home: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "Anvil":
        binary = find_anvil()
        self.port = free_port()
        self._home = tempfile.mkdtemp(prefix="nodeai-anvil-")
        args = [
            binary, "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id),
            "--accounts", str(self.accounts), "--max-persisted-states", "0", "--silent",
        ]  # fmt: skip
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        args += list(self.extra_args)
        env = dict(os.environ, HOME=self._home, FOUNDRY_DIR=os.path.join(self._home, ".foundry"))
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ToolError(f"anvil exited with code {self.process.returncode}: {err.strip()}")
            try:
                reply = requests.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, timeout=1)
                if reply.ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ToolError(f"anvil did not answer on {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._home:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def __enter__(self) -> "Anvil":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
