"""Where the daemon reads job inputs and writes outputs: an artifact store addressed by CID.

The stores of ``nodeai.ipfs`` (embedded kubo node, kubo RPC, with an LRU
cache) are the real backends; this module names the small surface the daemon
uses (:class:`ArtifactStore`), opens the configured backend, and adds
:class:`DirectoryStore`, a content-addressed folder for a single host without
IPFS (CIDv1, raw codec, sha2-256: the CID an IPFS node gives the same bytes
when added with ``--cid-version 1 --raw-leaves`` as one block).

Every read is verified: the bytes must hash to the CID asked for.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from nodeai.chain.marketplace import raw_cid
from nodeai.node.config import ConfigError, NodeConfig
from nodeai.node.errors import NodeError

__all__ = ["ArtifactStore", "DirectoryStore", "ArtifactError", "open_artifact_store"]

_CID = re.compile(r"^[A-Za-z0-9]{10,100}$")


class ArtifactError(NodeError):
    """An artifact is missing or does not match its CID (the directory backend; nodeai.ipfs has its own)."""


@runtime_checkable
class ArtifactStore(Protocol):
    def add_bytes(self, data: bytes) -> str: ...

    def get_bytes(self, cid: str) -> bytes: ...


class DirectoryStore:
    """Content-addressed files in one folder (one file per CID); writes are atomic."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def add_bytes(self, data: bytes, *, pin: bool = True) -> str:
        cid = raw_cid(data)
        path = self.root / cid
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return cid

    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes:
        if not _CID.match(cid):
            raise ArtifactError(f"{cid!r} is not a CID")
        path = self.root / cid
        if not path.is_file():
            raise ArtifactError(f"artifact {cid} not found in {self.root}")
        data = path.read_bytes()
        actual = raw_cid(data)
        if actual != cid:
            raise ArtifactError(f"artifact {cid} is corrupt: its bytes hash to {actual}")
        return data


def open_artifact_store(config: NodeConfig) -> Any:
    """The artifact store ``config.ipfs`` names (with the LRU cache of ``nodeai.ipfs`` when it is there)."""
    ipfs = config.ipfs
    if ipfs.backend == "directory":
        return DirectoryStore(ipfs.directory or config.state_path / "artifacts")
    try:
        from nodeai import ipfs as ipfs_module
    except ImportError as exc:
        raise ConfigError(f'ipfs.backend = "{ipfs.backend}" needs nodeai.ipfs, which cannot be imported ({exc}); '
                          'use backend = "directory" on a single host') from None
    if ipfs.backend == "embedded":
        store = ipfs_module.EmbeddedKuboStore(config.state_path / "ipfs", swarm_port=ipfs.swarm_port,
                                              bootstrap=tuple(ipfs.peers))
    else:
        store = ipfs_module.KuboRpcStore(ipfs.api_url)
    if ipfs.cache_max_bytes:
        store = ipfs_module.CachedStore(store, config.state_path / "artifact-cache", ipfs.cache_max_bytes)
    # NOTE: kubo CIDs are CIDv0 of a UnixFS DAG, DirectoryStore's are CIDv1 raw: the same bytes
    # have different CIDs in the two backends, and both are verified on every read.
    return store
