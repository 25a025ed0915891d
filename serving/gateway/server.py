"""Run a gateway app under uvicorn in a background thread (tests, benchmarks, the provider daemon).

``GatewayServer`` binds 127.0.0.1 by default on a free port, waits until the
app's start-up (engine loading) is done, and ``stop()`` shuts uvicorn down
and joins its thread; a start-up failure is raised in the caller's thread.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

__all__ = ["GatewayServer"]


class GatewayServer:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host = app, host
        self.port = port or _free_port(host)
        self.config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, lifespan="on",
                                     timeout_graceful_shutdown=5, access_log=False)
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` takes."""
        return self.url + "/v1"

    def start(self, timeout: float = 120.0) -> "GatewayServer":
        def run() -> None:
            try:
                self.server.run()
            except BaseException as exc:  # NOTE: handed to the starting thread below
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"gateway-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._error is not None or not self._thread.is_alive():
                self._thread.join(5)
                raise RuntimeError(f"the gateway on {self.url} failed to start: {self._error!r} "
                                   "(see the log above for the start-up error)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the gateway on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(5)
        self._thread = None

    def __enter__(self) -> "GatewayServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
