"""The artifact-store interface every backend implements, and helpers they share.

An artifact is one file addressed by its CID. Whatever the backend, bytes
handed to the caller have been checked against the CID they were asked for
(:func:`nodeai.ipfs.cid.verify_cid`), and files land at their destination by an
atomic rename, so a reader never sees a half-written or unverified artifact.
"""

from __future__ import annotations

import abc
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from nodeai.ipfs.cid import parse_cid, verify_file_cid
from nodeai.ipfs.unixfs import RAW

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called from the calling thread."""


class ArtifactStore(abc.ABC):
    """Content-addressed storage of artifacts (model weights, job inputs and outputs).

    Stores are context managers and safe to share between threads.
    """

    @abc.abstractmethod
    def add_bytes(self, data: bytes, *, pin: bool = True) -> str:
        """Store ``data``; return its CID (``pin=False`` lets garbage collection drop it)."""

    @abc.abstractmethod
    def add_file(self, path: Path, *, progress: Progress | None = None) -> str:
        """Store (and pin) the file at ``path``; return its CID."""

    @abc.abstractmethod
    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes:
        """The content of ``cid``, always verified against it.

        Raises ArtifactNotFoundError when no peer delivers it in ``timeout``
        seconds and CidMismatchError when what arrived is not that content.
        """

    @abc.abstractmethod
    def fetch_file(self, cid: str, dest: Path, *, timeout: float = 120.0,
                   progress: Progress | None = None) -> Path:
        """Write the content of ``cid`` to ``dest`` (verified, atomic rename); return ``dest``."""

    @abc.abstractmethod
    def has(self, cid: str) -> bool:
        """Whether the whole content of ``cid`` is available locally (no network)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the node/connection; idempotent."""

    def __enter__(self) -> "ArtifactStore":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def check_timeout(timeout: float) -> float:
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def fetch_verified(cid: str, dest: Path, timeout: float, write: Callable[[Path, bool, float], None], *,
                   source: str) -> Path:
    """The part of ``fetch_file`` every backend shares: check ``cid`` and ``timeout``, have
    ``write(tmp, raw_root, timeout)`` put the content in a partial file beside ``dest``, verify
    it against ``cid`` (``source`` says where it came from) and rename it to ``dest``.

    ``raw_root`` tells whether ``cid`` is of the ``raw`` codec (a single block). The partial
    file is removed whatever happens; returns ``dest``.
    """
    parsed = parse_cid(cid)
    timeout = check_timeout(timeout)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    try:
        write(tmp, parsed.codec.code == RAW, timeout)
        verify_file_cid(tmp, cid, source=source)
        tmp.replace(dest)
    finally:
        remove_path(tmp)
    return dest


def partial_path(dest: Path) -> Path:
    """A unique temporary name beside ``dest``, so the final rename stays on one file system."""
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.partial")


def move_or_copy(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, or copy when they are on different file systems."""
    try:
        os.replace(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        src.unlink(missing_ok=True)


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree if it exists (best effort: clean-up only)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def check_source_file(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot add {path}: no such file")
    if not path.is_file():
        raise IsADirectoryError(f"cannot add {path}: an artifact is a single regular file (pack folders first)")
    return path
