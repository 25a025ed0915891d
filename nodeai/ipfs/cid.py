"""CIDs of artifacts: compute them locally and verify content against them.

The store never trusts the node that served the bytes: :func:`verify_cid`
rebuilds the UnixFS DAG (see :mod:`nodeai.ipfs.unixfs`) and compares root
multihashes. CIDv0 (``Qm...``) and CIDv1 over dag-pb name the same DAG, so
both are accepted; a CIDv1 of the ``raw`` codec names one block holding the
bytes themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from multiformats import CID

from nodeai.ipfs.errors import CidMismatchError, InvalidCidError
from nodeai.ipfs.unixfs import DAG_PB, RAW, SHA2_256, DagBuilder, sha256_multihash

_READ_SIZE = 1 << 20


def parse_cid(cid: str) -> CID:
    """Decode ``cid``; raise InvalidCidError unless it is a sha2-256 dag-pb or raw CID."""
    if not isinstance(cid, str) or not cid:
        raise InvalidCidError(cid, "expected a non-empty string")
    try:
        parsed = CID.decode(cid.strip())
    except Exception as exc:  # noqa: BLE001 - multiformats raises several unrelated types
        raise InvalidCidError(cid, str(exc) or type(exc).__name__) from exc
    if parsed.hashfun.code != SHA2_256:
        raise InvalidCidError(cid, f"hash function {parsed.hashfun.name} is not supported (only sha2-256)")
    if parsed.codec.code not in (DAG_PB, RAW):
        raise InvalidCidError(cid, f"codec {parsed.codec.name} is not a file (only dag-pb or raw)")
    return parsed


def cid_v0(multihash: bytes) -> str:
    return str(CID("base58btc", 0, "dag-pb", multihash))


def compute_cid(data: bytes) -> str:
    """The CIDv0 kubo gives ``data`` with its default ``ipfs add`` settings."""
    builder = DagBuilder()
    builder.write(data)
    return cid_v0(builder.finish())


def compute_file_cid(path: Path, *, progress: Callable[[int, int], None] | None = None) -> str:
    """:func:`compute_cid` of a file's content, read in 1 MiB pieces (constant memory)."""
    return cid_v0(file_dag(path, progress=progress).finish())


def file_dag(path: Path, *, progress: Callable[[int, int], None] | None = None,
             keep_leaves: bool = False) -> DagBuilder:
    """The finished DagBuilder of a file (``keep_leaves``: with every leaf's multihash and size)."""
    builder = DagBuilder(keep_leaves=keep_leaves)
    total = path.stat().st_size
    with path.open("rb") as fh:
        while piece := fh.read(_READ_SIZE):
            builder.write(piece)
            if progress is not None:
                progress(builder.size, total)
    builder.finish()
    return builder


def _actual_for(expected: CID, multihash: bytes) -> str:
    """Render the computed multihash in the same CID version as the one expected."""
    if expected.version == 0:
        return cid_v0(multihash)
    return str(CID("base32", 1, expected.codec, multihash))


def verify_cid(data: bytes, cid: str) -> None:
    """Raise CidMismatchError (naming both CIDs) unless ``data`` is the content of ``cid``."""
    expected = parse_cid(cid)
    if expected.codec.code == RAW:
        multihash = sha256_multihash(data)
    else:
        builder = DagBuilder()
        builder.write(data)
        multihash = builder.finish()
    if multihash != bytes(expected.digest):
        raise CidMismatchError(cid, _actual_for(expected, multihash))


def verify_file_cid(path: Path, cid: str, *, source: str | None = None) -> None:
    """:func:`verify_cid` for a file on disk, streamed."""
    expected = parse_cid(cid)
    if expected.codec.code == RAW:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while piece := fh.read(_READ_SIZE):
                digest.update(piece)
        multihash = bytes((SHA2_256, 32)) + digest.digest()
    else:
        multihash = file_dag(path).finish()
    if multihash != bytes(expected.digest):
        raise CidMismatchError(cid, _actual_for(expected, multihash), source=source or f"file {path}")
