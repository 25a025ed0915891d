"""Read-only view of a kubo repo's block files (flatfs), for local checks and progress.

The embedded node exposes no block API, but kubo stores each block as one
file ``blocks/<shard>/<KEY>.data`` where ``KEY`` is the unpadded upper-case
base32 of the block's multihash (kubo >= 0.12 keys blocks by multihash) and
``<shard>`` comes from the ``blocks/SHARDING`` file. Files are written to a
temporary name and renamed, so reading them while the node runs is safe.

This lets the store tell whether a whole DAG is local (:func:`dag_complete`)
and how many bytes of a fetch have arrived (:class:`DagProgress`) without
trusting these bytes for anything else: content handed to callers is always
re-verified against its CID.
"""

from __future__ import annotations

import base64
from pathlib import Path

from nodeai.ipfs.unixfs import DagFormatError, LeafInfo, decode_node

_SHARD_PREFIX = "/repo/flatfs/shard/v1/"


class Flatfs:
    """Locate block files in a flatfs folder (``<repo>/blocks``)."""

    def __init__(self, blocks_dir: Path) -> None:
        self.root = Path(blocks_dir)
        self._shard = self._read_sharding()

    def _read_sharding(self) -> tuple[str, int]:
        spec_file = self.root / "SHARDING"
        spec = spec_file.read_text().strip() if spec_file.exists() else _SHARD_PREFIX + "next-to-last/2"
        if not spec.startswith(_SHARD_PREFIX):
            raise ValueError(f"unknown flatfs sharding {spec!r} in {spec_file}")
        kind, _, length = spec[len(_SHARD_PREFIX):].partition("/")
        if kind not in ("prefix", "suffix", "next-to-last"):
            raise ValueError(f"unknown flatfs sharding function {kind!r} in {spec_file}")
        return kind, int(length)

    @staticmethod
    def key(multihash: bytes) -> str:
        return base64.b32encode(multihash).decode("ascii").rstrip("=")

    def path(self, multihash: bytes) -> Path:
        key = self.key(multihash)
        kind, n = self._shard
        if kind == "prefix":
            shard = (key + "_" * n)[:n]
        elif kind == "suffix":
            shard = ("_" * n + key)[-n:]
        else:  # next-to-last
            padded = "_" * (n + 1) + key
            shard = padded[-n - 1 : -1]
        return self.root / shard / f"{key}.data"

    def has(self, multihash: bytes) -> bool:
        return self.path(multihash).is_file()

    def get(self, multihash: bytes) -> bytes | None:
        try:
            return self.path(multihash).read_bytes()
        except FileNotFoundError:
            return None


class DagProgress:
    """Count the file bytes of a DAG present in the blockstore, incrementally.

    ``poll()`` returns ``(done, total)``; ``total`` is ``None`` until the root
    block is there. A present block is looked at once: a leaf only by its
    first byte (a dag-pb node without links starts with its Data field,
    0x0a), its size taken from the parent's ``blocksizes``; internal nodes
    are decoded for their links. So polling costs one ``open`` per
    outstanding block and never re-reads the content.
    """

    def __init__(self, blocks: Flatfs, root: bytes, *, raw_root: bool = False) -> None:
        self._blocks = blocks
        self._raw_root = raw_root
        self.total: int | None = None
        self.done = 0
        # (multihash, file bytes under it; None for the root, whose size comes from its own block)
        self._pending: list[tuple[bytes, int | None]] = [(root, None)]

    @property
    def complete(self) -> bool:
        return not self._pending

    @property
    def outstanding(self) -> tuple[bytes, ...]:
        """Multihashes of the blocks still to be seen."""
        return tuple(multihash for multihash, _ in self._pending)

    def poll(self) -> tuple[int, int | None]:
        """Look again at the outstanding blocks; raise DagFormatError for a non-file DAG."""
        still: list[tuple[bytes, int | None]] = []
        for multihash, size in self._pending:
            path = self._blocks.path(multihash)
            try:
                with path.open("rb") as fh:
                    first = fh.read(1)
                    if size is not None and first == b"\x0a":
                        self.done += size
                        continue
                    block = first + fh.read()
            except FileNotFoundError:
                still.append((multihash, size))
                continue
            if size is None and self._raw_root:
                self.total = self.done = len(block)
                continue
            node = decode_node(block)
            if size is None:
                self.total = node.filesize
            if node.links:
                still.extend((link.multihash, bs) for link, bs in zip(node.links, node.blocksizes))
            else:
                self.done += len(node.data)
        self._pending = still
        return self.done, self.total


def dag_complete(blocks: Flatfs, root: bytes, *, raw_root: bool = False) -> bool:
    """Whether every block of the DAG under ``root`` is in the blockstore."""
    progress = DagProgress(blocks, root, raw_root=raw_root)
    try:
        # NOTE: each poll resolves one more level of the tree (or finds a
        # block missing), so the loop ends after at most depth+1 rounds.
        while not progress.complete:
            outstanding = progress.outstanding
            progress.poll()
            if progress.outstanding == outstanding:
                return False
        return True
    except DagFormatError:
        return False


def leaves_present(blocks: Flatfs, leaves: list[LeafInfo], start: int) -> tuple[int, int]:
    """Walk ``leaves`` from index ``start`` while their blocks exist; return (next index, bytes found)."""
    found = 0
    index = start
    while index < len(leaves) and blocks.has(leaves[index].multihash):
        found += leaves[index].size
        index += 1
    return index, found
