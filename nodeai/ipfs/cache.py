"""A size-limited local cache of verified artifacts in front of any store.

Cached files live in ``cache_dir`` named by their CID. Recency is kept in the
files' modification times (touched on every hit), so the LRU order survives
a restart without an index file. Every read of a cached file re-checks its
CID: a file corrupted on disk (bit rot, a stray write) is counted, dropped and
fetched again from the inner store instead of being served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nodeai.ipfs.cid import parse_cid, verify_cid, verify_file_cid
from nodeai.ipfs.errors import CidMismatchError, StoreClosedError
from nodeai.ipfs.store import ArtifactStore, Progress, check_timeout, partial_path, remove_path

_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class CacheStats:
    """Counters since the cache was opened, plus its current content."""

    hits: int
    misses: int
    evictions: int
    corrupt: int
    entries: int
    bytes: int
    max_bytes: int


class CachedStore(ArtifactStore):
    """LRU cache of artifacts on local disk, bounded to ``max_bytes``, over ``inner``.

    An artifact larger than ``max_bytes`` is passed through without being
    cached. Closing the cache closes ``inner`` too, unless ``owns_inner`` is
    false (an inner store shared with other users).
    """

    def __init__(self, inner: ArtifactStore, cache_dir: Path, max_bytes: int, *, owns_inner: bool = True) -> None:
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        self.inner = inner
        self.owns_inner = owns_inner
        self.cache_dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cid_locks: dict[str, threading.Lock] = {}
        self._in_use: dict[str, int] = {}
        self._closed = False
        self.hits = self.misses = self.evictions = self.corrupt = 0
        self._entries: OrderedDict[str, int] = OrderedDict()
        found: list[tuple[float, str, int]] = []
        for entry in self.cache_dir.iterdir():
            if entry.name.startswith(".") or not entry.is_file():
                # NOTE: leftovers of a crash mid-write; never served.
                if entry.name.startswith(_TMP_PREFIX) or entry.name.endswith(".partial"):
                    remove_path(entry)
                continue
            stat = entry.stat()
            found.append((stat.st_mtime, entry.name, stat.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
        with self._lock:
            self._evict(keep=None)

    # -- reading

    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes:
        parse_cid(cid)
        timeout = check_timeout(timeout)
        with self._claim(cid):
            path = self._path(cid)
            if self._cached(cid):
                data = path.read_bytes()
                try:
                    verify_cid(data, cid)
                except CidMismatchError:
                    self._drop_corrupt(cid)
                else:
                    self._hit(cid)
                    return data
            with self._lock:
                self.misses += 1
            data = self.inner.get_bytes(cid, timeout=timeout)
            # NOTE: checked again: whatever the inner store is, nothing
            # unverified ever enters the cache.
            verify_cid(data, cid)
            if len(data) <= self.max_bytes:
                self._insert_bytes(cid, data)
            return data

    def fetch_file(self, cid: str, dest: Path, *, timeout: float = 120.0,
                   progress: Progress | None = None) -> Path:
        parse_cid(cid)
        timeout = check_timeout(timeout)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._claim(cid):
            out = partial_path(dest)
            try:
                if self._cached(cid):
                    shutil.copyfile(self._path(cid), out)
                    try:
                        verify_file_cid(out, cid, source=f"the cached copy of {cid}")
                    except CidMismatchError:
                        self._drop_corrupt(cid)
                    else:
                        self._hit(cid)
                        if progress is not None:
                            size = out.stat().st_size
                            progress(size, size)
                        out.replace(dest)
                        return dest
                with self._lock:
                    self.misses += 1
                tmp = self.cache_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
                try:
                    self.inner.fetch_file(cid, tmp, timeout=timeout, progress=progress)
                    size = tmp.stat().st_size
                    if size <= self.max_bytes:
                        shutil.copyfile(tmp, out)
                        self._insert(cid, tmp, size)
                    else:
                        os.replace(tmp, out)
                finally:
                    remove_path(tmp)
                out.replace(dest)
                return dest
            finally:
                remove_path(out)

    def has(self, cid: str) -> bool:
        parse_cid(cid)
        with self._lock:
            if cid in self._entries:
                return True
        return self.inner.has(cid)

    # -- adding (delegated; small artifacts are cached as they are added)

    def add_bytes(self, data: bytes, *, pin: bool = True) -> str:
        self._check_open()
        cid = self.inner.add_bytes(data, pin=pin)
        if len(data) <= self.max_bytes:
            with self._claim(cid):
                self._insert_bytes(cid, data)
        return cid

    def add_file(self, path: Path, *, progress: Progress | None = None) -> str:
        self._check_open()
        return self.inner.add_file(path, progress=progress)

    # -- bookkeeping

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, self.evictions, self.corrupt, len(self._entries),
                              sum(self._entries.values()), self.max_bytes)

    def cached_cids(self) -> list[str]:
        """CIDs in the cache, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _path(self, cid: str) -> Path:
        return self.cache_dir / cid

    def _cached(self, cid: str) -> bool:
        with self._lock:
            if cid not in self._entries:
                return False
        if not self._path(cid).is_file():
            # NOTE: deleted behind our back: just a miss.
            with self._lock:
                self._entries.pop(cid, None)
            return False
        return True

    def _hit(self, cid: str) -> None:
        with self._lock:
            self.hits += 1
            if cid in self._entries:
                self._entries.move_to_end(cid)
        with contextlib.suppress(OSError):
            os.utime(self._path(cid))

    def _drop_corrupt(self, cid: str) -> None:
        with self._lock:
            self.corrupt += 1
            self._entries.pop(cid, None)
        remove_path(self._path(cid))

    def _insert(self, cid: str, tmp: Path, size: int) -> None:
        os.replace(tmp, self._path(cid))
        with self._lock:
            self._entries[cid] = size
            self._entries.move_to_end(cid)
            self._evict(keep=cid)

    def _insert_bytes(self, cid: str, data: bytes) -> None:
        tmp = self.cache_dir / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            tmp.write_bytes(data)
            self._insert(cid, tmp, len(data))
        finally:
            remove_path(tmp)

    def _evict(self, keep: str | None) -> None:
        """Drop least recently used entries until the cache fits (caller holds the lock)."""
        total = sum(self._entries.values())
        for cid in list(self._entries):
            if total <= self.max_bytes:
                break
            if cid == keep or self._in_use.get(cid):
                continue
            total -= self._entries.pop(cid)
            remove_path(self._path(cid))
            self.evictions += 1

    @contextlib.contextmanager
    def _claim(self, cid: str) -> Iterator[None]:
        """Serialise work on one CID (one fetch for concurrent misses) and keep it from eviction."""
        with self._lock:
            self._check_open()
            lock = self._cid_locks.setdefault(cid, threading.Lock())
            self._in_use[cid] = self._in_use.get(cid, 0) + 1
        try:
            with lock:
                yield
        finally:
            with self._lock:
                self._in_use[cid] -= 1
                if not self._in_use[cid]:
                    del self._in_use[cid]
                    self._cid_locks.pop(cid, None)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the artifact cache in {self.cache_dir}")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.owns_inner:
            self.inner.close()

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, {str(self.cache_dir)!r}, max_bytes={self.max_bytes})"
