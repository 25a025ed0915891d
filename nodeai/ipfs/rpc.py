"""Artifact store backed by an IPFS daemon's HTTP RPC API (``/api/v0``), for operators
who run their own kubo.

Calls used: ``add`` (with kubo's default import settings spelled out, so the
CID does not depend on the daemon's ``Import`` config), ``cat``, ``block/get``
(the root block, for the total size shown by progress), ``refs`` (local
availability), ``pin/add``, ``id`` and ``swarm/connect``. Every byte read back
is verified against its CID here, whatever the daemon claims.

``timeout`` on reads is an idle timeout: the request fails when the daemon
sends nothing for that long (it does not limit a large transfer that keeps
moving); closing the request cancels the daemon's search for the content.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from nodeai.ipfs.cid import compute_cid, compute_file_cid, parse_cid, verify_cid
from nodeai.ipfs.errors import ArtifactNotFoundError, CidMismatchError, IpfsError, StoreClosedError
from nodeai.ipfs.store import ArtifactStore, Progress, check_source_file, check_timeout, fetch_verified
from nodeai.ipfs.unixfs import CHUNK_SIZE, DagFormatError, decode_node

_ADD_PARAMS = {
    # NOTE: kubo's defaults, spelled out: a daemon configured for CIDv1/raw
    # leaves would otherwise return a CID other nodes (and verify_cid) do
    # not recompute the same way.
    "cid-version": "0",
    "raw-leaves": "false",
    "chunker": f"size-{CHUNK_SIZE}",
    "hash": "sha2-256",
    "quieter": "true",
}
_CONTROL_TIMEOUT_S = 30.0
_HAS_TIMEOUT = "1s"
_STREAM_PIECE = 1 << 16


class _ProgressReader:
    """File wrapper reporting upload progress as httpx reads the multipart body."""

    def __init__(self, fh: BinaryIO, total: int, progress: Progress) -> None:
        self._fh, self._total, self._progress, self._done = fh, total, progress, 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._done += len(data)
        self._progress(min(self._done, self._total), self._total)
        return data


class KuboRpcStore(ArtifactStore):
    """Talks to a kubo-compatible daemon at ``api_url`` (its ``Addresses.API``)."""

    def __init__(self, api_url: str = "http://127.0.0.1:5001") -> None:
        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise ValueError(f"api_url must be an http(s) URL such as http://127.0.0.1:5001, got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=f"{self.api_url}/api/v0", timeout=_CONTROL_TIMEOUT_S)
        self._closed = False
        self._lock = threading.Lock()

    # -- low level

    def _post(self, path: str, *, params: dict[str, Any] | list[tuple[str, str]] | None = None,
              timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        self._check_open()
        try:
            response = self._client.post(path, params=params, timeout=timeout or _CONTROL_TIMEOUT_S, **kwargs)
        except httpx.ConnectError as exc:
            raise IpfsError(f"no IPFS RPC API answers at {self.api_url} ({exc}): start the daemon "
                            "(`ipfs daemon`) or point api_url at its Addresses.API") from exc
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise IpfsError(f"IPFS RPC call {path} to {self.api_url} failed: {exc}") from exc
        if response.status_code != 200:
            raise IpfsError(f"IPFS RPC {path} failed with HTTP {response.status_code}: {_message(response)}")
        return response

    @contextlib.contextmanager
    def _stream(self, path: str, params: dict[str, Any], timeout: float) -> Iterator[httpx.Response]:
        self._check_open()
        request_timeout = httpx.Timeout(_CONTROL_TIMEOUT_S, read=timeout)
        try:
            with self._client.stream("POST", path, params=params, timeout=request_timeout) as response:
                if response.status_code != 200:
                    response.read()
                    raise IpfsError(f"IPFS RPC {path} failed with HTTP {response.status_code}: {_message(response)}")
                yield response
        except httpx.ConnectError as exc:
            raise IpfsError(f"no IPFS RPC API answers at {self.api_url} ({exc}): start the daemon "
                            "(`ipfs daemon`) or point api_url at its Addresses.API") from exc

    # -- node facts

    def id(self) -> dict[str, Any]:
        """The daemon's ``id`` answer (``ID``, ``Addresses``, ``AgentVersion``...)."""
        return dict(self._post("id").json())

    @property
    def peer_id(self) -> str:
        return str(self.id()["ID"])

    def multiaddrs(self) -> list[str]:
        return [str(addr) for addr in self.id().get("Addresses") or []]

    def connect(self, multiaddr: str) -> None:
        if not isinstance(multiaddr, str) or "/p2p/" not in multiaddr:
            raise ValueError(f"{multiaddr!r} is not a peer multiaddr: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        self._post("swarm/connect", params={"arg": multiaddr})

    # -- adding

    def add_bytes(self, data: bytes, *, pin: bool = True) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"add_bytes takes bytes, got {type(data).__name__}")
        data = bytes(data)
        params = dict(_ADD_PARAMS, pin="true" if pin else "false")
        response = self._post("add", params=params, files={"file": ("artifact", data, "application/octet-stream")})
        return self._check_added(response, compute_cid(data), "the added bytes")

    def add_file(self, path: Path, *, progress: Progress | None = None) -> str:
        path = check_source_file(Path(path))
        expected = compute_file_cid(path)
        total = path.stat().st_size
        params = dict(_ADD_PARAMS, pin="true")
        with path.open("rb") as fh:
            body: Any = fh if progress is None else _ProgressReader(fh, total, progress)
            # NOTE: no read timeout: the daemon answers only once it has
            # stored the whole file.
            response = self._post("add", params=params, timeout=None,
                                  files={"file": (path.name, body, "application/octet-stream")})
        cid = self._check_added(response, expected, str(path))
        if progress is not None:
            progress(total, total)
        return cid

    def _check_added(self, response: httpx.Response, expected: str, what: str) -> str:
        lines = [line for line in response.text.splitlines() if line.strip()]
        if not lines:
            raise IpfsError(f"IPFS RPC add at {self.api_url} answered nothing for {what}")
        cid = str(json.loads(lines[-1]).get("Hash", ""))
        if cid != expected:
            raise CidMismatchError(expected, cid, source=f"the daemon's import of {what}")
        return cid

    # -- fetching

    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes:
        parse_cid(cid)
        timeout = check_timeout(timeout)
        chunks = bytearray()
        try:
            with self._stream("cat", {"arg": cid}, timeout) as response:
                for piece in response.iter_bytes(_STREAM_PIECE):
                    chunks += piece
        except httpx.TimeoutException as exc:
            raise ArtifactNotFoundError(cid, timeout, f"{len(chunks)} bytes arrived") from exc
        data = bytes(chunks)
        verify_cid(data, cid)
        return data

    def fetch_file(self, cid: str, dest: Path, *, timeout: float = 120.0,
                   progress: Progress | None = None) -> Path:
        def cat(tmp: Path, raw_root: bool, timeout: float) -> None:
            done = 0
            try:
                total = self._size(cid, raw_root, timeout) if progress is not None else 0
                with tmp.open("wb") as out, self._stream("cat", {"arg": cid}, timeout) as response:
                    for piece in response.iter_bytes(_STREAM_PIECE):
                        out.write(piece)
                        done += len(piece)
                        if progress is not None:
                            progress(done, max(total, done))
            except httpx.TimeoutException as exc:
                raise ArtifactNotFoundError(cid, timeout, f"{done} bytes arrived") from exc

        return fetch_verified(cid, dest, timeout, cat, source=f"the content {self.api_url} served for {cid}")

    def _size(self, cid: str, raw: bool, timeout: float) -> int:
        """File size from the root block (fetched anyway by the cat that follows)."""
        try:
            with self._stream("block/get", {"arg": cid}, timeout) as response:
                block = response.read()
        except httpx.TimeoutException as exc:
            raise ArtifactNotFoundError(cid, timeout, "no peer sent its root block") from exc
        if raw:
            return len(block)
        try:
            return decode_node(block).filesize
        except DagFormatError as exc:
            raise IpfsError(f"{cid} is not a single file ({exc}): artifacts must be files") from exc

    def has(self, cid: str) -> bool:
        parse_cid(cid)
        # NOTE: offline=true keeps kubo from asking the network; the short
        # timeout bounds daemons that ignore it.
        params = {"arg": cid, "recursive": "true", "offline": "true", "timeout": _HAS_TIMEOUT}
        try:
            with self._stream("refs", params, 5.0) as response:
                for line in response.iter_lines():
                    if line.strip() and json.loads(line).get("Err"):
                        return False
        except (IpfsError, httpx.TimeoutException):
            self._check_open()
            return False
        # NOTE: refs lists the children only; the root is local if the
        # listing succeeded, except for a single-block file: ask for it.
        try:
            self._post("block/stat", params={"arg": cid, "offline": "true", "timeout": _HAS_TIMEOUT}, timeout=5.0)
        except (IpfsError, httpx.TimeoutException):
            self._check_open()
            return False
        return True

    def pin(self, cid: str, *, timeout: float = 120.0) -> None:
        parse_cid(cid)
        self._post("pin/add", params={"arg": cid}, timeout=check_timeout(timeout))

    # -- life cycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the IPFS RPC store for {self.api_url}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    def __repr__(self) -> str:
        return f"KuboRpcStore({self.api_url!r})"


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or "(empty body)"
    if isinstance(body, dict) and "Message" in body:
        return str(body["Message"])
    return json.dumps(body)[:300]
