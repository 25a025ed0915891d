"""UnixFS file DAGs exactly as kubo builds them with its defaults (pure logic, no I/O).

``ipfs add`` with kubo's defaults (CIDv0, ``size-262144`` chunker, balanced
layout, no raw leaves) cuts a file into 256 KiB chunks and links them in a
dag-pb tree with at most 174 links per node. Re-building that tree here lets a
provider check a fetched artifact against its CID without trusting the node
that served it.

Shape of the tree (go-unixfs ``importer/balanced``):

* an empty file or a single chunk is one leaf node, UnixFS type ``File``;
* otherwise the tree is filled left to right: every internal node has up to 174
  children, every child of a depth-``d`` node is a complete-as-possible subtree
  of depth ``d-1``, and a subtree holding a single chunk still keeps all its
  internal levels (so leaves always sit at the same depth);
* every node has UnixFS type ``File`` (leaves too: type ``Raw`` appears only
  with ``--raw-leaves``, which CIDv0 does not use); internal nodes carry
  ``filesize`` and one ``blocksizes`` entry per child.

Encoding (proto2, fields in number order, as gogo-protobuf writes them):

* UnixFS ``Data``: ``Type`` (1), ``Data`` (2, leaves only), ``filesize`` (3),
  ``blocksizes`` (4, one unpacked entry per child);
* dag-pb ``PBNode``: ``Links`` (2) first, then ``Data`` (1); each ``PBLink``
  holds ``Hash`` (1), ``Name`` (2, written even when empty) and ``Tsize`` (3,
  the child's block size plus its children's ``Tsize``).

:class:`DagBuilder` consumes chunks one at a time, so a multi-gigabyte artifact
is hashed in constant memory; :func:`decode_node` reads such blocks back (the
embedded store walks its blockstore with it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

CHUNK_SIZE = 262_144
"""kubo's default chunker, ``size-262144``."""

MAX_LINKS = 174
"""go-unixfs ``DefaultLinksPerBlock``: (256 KiB block) / (~1.5 KiB per link)."""

SHA2_256 = 0x12
DAG_PB = 0x70
RAW = 0x55

# UnixFS Data.DataType values (unixfs.proto).
TYPE_RAW = 0
TYPE_DIRECTORY = 1
TYPE_FILE = 2
TYPE_METADATA = 3
TYPE_SYMLINK = 4
TYPE_HAMT_SHARD = 5


class DagFormatError(ValueError):
    """A block is not valid dag-pb/UnixFS (raised by the decoders)."""


# --------------------------------------------------------------------------- protobuf


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("protobuf varints here are unsigned")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DagFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DagFormatError("varint longer than 64 bits")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` of a protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise DagFormatError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        else:
            raise DagFormatError(f"unsupported protobuf wire type {wire}")


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Link:
    """A dag-pb link: the child's multihash (CIDv0), name and cumulative size."""

    multihash: bytes
    tsize: int
    name: str = ""


@dataclass(frozen=True)
class Block:
    """One encoded block: its sha2-256 multihash and bytes."""

    multihash: bytes
    data: bytes


@dataclass(frozen=True)
class FileNode:
    """A decoded dag-pb node holding a UnixFS file (leaf or internal)."""

    type: int
    data: bytes
    filesize: int
    blocksizes: tuple[int, ...]
    links: tuple[Link, ...]


def sha256_multihash(data: bytes) -> bytes:
    return bytes((SHA2_256, 32)) + hashlib.sha256(data).digest()


def encode_unixfs(type_: int, data: bytes | None, filesize: int, blocksizes: Iterable[int] = ()) -> bytes:
    out = _field_varint(1, type_)
    if data is not None:
        out += _field_bytes(2, data)
    out += _field_varint(3, filesize)
    for size in blocksizes:
        out += _field_varint(4, size)
    return out


def leaf_frame(size: int, has_data: bool) -> tuple[bytes, bytes]:
    """The bytes of a leaf block before and after its chunk of file data.

    ``encode_dag_pb((), encode_unixfs(TYPE_FILE, data, len(data)))`` is
    ``prefix + data + suffix``.
    """
    data_field = _varint((2 << 3) | 2) + _varint(size) if has_data else b""
    suffix = _field_varint(3, size)
    unixfs_len = len(_field_varint(1, TYPE_FILE)) + len(data_field) + size + len(suffix)
    prefix = _varint((1 << 3) | 2) + _varint(unixfs_len) + _field_varint(1, TYPE_FILE) + data_field
    return prefix, suffix


def encode_dag_pb(links: Iterable[Link], data: bytes) -> bytes:
    out = bytearray()
    for link in links:
        body = _field_bytes(1, link.multihash) + _field_bytes(2, link.name.encode()) + _field_varint(3, link.tsize)
        out += _field_bytes(2, body)
    out += _field_bytes(1, data)
    return bytes(out)


def decode_node(block: bytes) -> FileNode:
    """Decode a dag-pb block holding a UnixFS file node; anything else raises DagFormatError."""
    links: list[Link] = []
    unixfs: bytes | None = None
    for number, wire, value in _fields(block):
        if number == 2 and wire == 2:
            assert isinstance(value, bytes)
            mh, name, tsize = b"", "", 0
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    assert isinstance(v, bytes)
                    mh = v
                elif n == 2 and w == 2:
                    assert isinstance(v, bytes)
                    name = v.decode("utf-8", "replace")
                elif n == 3 and w == 0:
                    assert isinstance(v, int)
                    tsize = v
            links.append(Link(mh, tsize, name))
        elif number == 1 and wire == 2:
            assert isinstance(value, bytes)
            unixfs = value
        else:
            raise DagFormatError(f"unexpected dag-pb field {number}")
    if unixfs is None:
        raise DagFormatError("dag-pb node without UnixFS data")
    type_, data, filesize, sizes = -1, b"", -1, []
    for number, wire, value in _fields(unixfs):
        if number == 1 and wire == 0:
            assert isinstance(value, int)
            type_ = value
        elif number == 2 and wire == 2:
            assert isinstance(value, bytes)
            data = value
        elif number == 3 and wire == 0:
            assert isinstance(value, int)
            filesize = value
        elif number == 4 and wire == 0:
            assert isinstance(value, int)
            sizes.append(value)
    if type_ not in (TYPE_FILE, TYPE_RAW):
        raise DagFormatError(f"UnixFS node of type {type_} is not a file (directories are not artifacts)")
    if filesize < 0:
        filesize = len(data) + sum(sizes)
    if len(sizes) != len(links):
        raise DagFormatError(f"{len(links)} links but {len(sizes)} blocksizes")
    return FileNode(type_, data, filesize, tuple(sizes), tuple(links))


# --------------------------------------------------------------------------- builder


@dataclass
class _Pending:
    links: list[Link] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class LeafInfo:
    """Where one chunk went: its block's multihash and how many file bytes it holds."""

    multihash: bytes
    size: int


class DagBuilder:
    """Streaming builder of kubo's default UnixFS DAG for one file.

    Feed it with :meth:`write` (any slicing of the file), then :meth:`finish`
    returns the root block's multihash. Blocks are handed to ``on_block`` as
    they are made (``None``: hash only, keep nothing).
    """

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS,
                 keep_leaves: bool = False, on_block: Callable[[Block], None] | None = None) -> None:
        if chunk_size < 1 or max_links < 2:
            raise ValueError("chunk_size must be >= 1 and max_links >= 2")
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._buffer = bytearray()
        # levels[k] collects the children of the node being built at depth k+1.
        self._levels: list[_Pending] = []
        self._leaf_count = 0
        self._size = 0
        self._root: bytes | None = None
        self._on_block = on_block
        self.leaves: list[LeafInfo] | None = [] if keep_leaves else None

    @property
    def size(self) -> int:
        """File bytes written so far."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._root is not None:
            raise RuntimeError("DagBuilder already finished")
        view = memoryview(data).cast("B")
        self._size += len(view)
        chunk = self._chunk_size
        if self._buffer:
            # NOTE: top up the partial chunk first; full chunks are then hashed
            # straight from the caller's buffer (no copy of a large input).
            need = chunk - len(self._buffer)
            self._buffer += view[:need]
            view = view[need:]
            if len(self._buffer) < chunk:
                return
            self._leaf(memoryview(bytes(self._buffer)))
            self._buffer.clear()
        full = len(view) - len(view) % chunk
        for start in range(0, full, chunk):
            self._leaf(view[start : start + chunk])
        self._buffer += view[full:]

    def finish(self) -> bytes:
        """Close the file and return the root multihash (idempotent)."""
        if self._root is not None:
            return self._root
        if self._buffer or self._leaf_count == 0:
            # NOTE: an empty file is one leaf without a Data field (go-unixfs
            # sets no data for nil input), hence None rather than b"".
            self._leaf(memoryview(bytes(self._buffer)) if self._buffer else None)
            self._buffer.clear()
        # Close every partial subtree bottom-up (a commit may cascade upwards
        # when it fills its parent); what stays is the top level.
        while True:
            top = max(d for d, level in enumerate(self._levels) if level.links)
            lower = next((d for d in range(top) if self._levels[d].links), None)
            if lower is None:
                break
            self._commit(lower)
        pending = self._levels[top]
        if len(pending.links) == 1:
            # NOTE: a top level holding one link is a subtree that was filled
            # exactly when the data ended: kubo does not wrap it again.
            self._root = pending.links[0].multihash
        else:
            self._root = self._commit(top, push=False)
        return self._root

    # -- internals

    def _emit(self, block: bytes) -> bytes:
        mh = sha256_multihash(block)
        if self._on_block is not None:
            self._on_block(Block(mh, block))
        return mh

    def _leaf(self, data: memoryview | None) -> None:
        size = len(data) if data is not None else 0
        # NOTE: without raw leaves every leaf is a UnixFS File node (kubo
        # 0.22, checked against the embedded node), not type Raw.
        self._leaf_count += 1
        # The block is prefix + data + suffix (see leaf_frame); hashing the
        # three pieces avoids copying every chunk twice.
        prefix, suffix = leaf_frame(size, data is not None)
        digest = hashlib.sha256(prefix)
        if data is not None:
            digest.update(data)
        digest.update(suffix)
        mh = bytes((SHA2_256, 32)) + digest.digest()
        block_size = len(prefix) + size + len(suffix)
        if self._on_block is not None:
            self._on_block(Block(mh, b"".join((prefix, data if data is not None else b"", suffix))))
        if self.leaves is not None:
            self.leaves.append(LeafInfo(mh, size))
        self._push(0, Link(mh, block_size), size)

    def _push(self, depth: int, link: Link, filesize: int) -> None:
        while len(self._levels) <= depth:
            self._levels.append(_Pending())
        level = self._levels[depth]
        level.links.append(link)
        level.sizes.append(filesize)
        if len(level.links) == self._max_links:
            self._commit(depth)

    def _commit(self, depth: int, *, push: bool = True) -> bytes:
        level = self._levels[depth]
        links, sizes = level.links, level.sizes
        self._levels[depth] = _Pending()
        filesize = sum(sizes)
        block = encode_dag_pb(links, encode_unixfs(TYPE_FILE, None, filesize, sizes))
        mh = self._emit(block)
        if push:
            self._push(depth + 1, Link(mh, len(block) + sum(link.tsize for link in links)), filesize)
        return mh


def build(data: bytes, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> tuple[bytes, list[Block]]:
    """Root multihash and every block of ``data``'s DAG (root last)."""
    blocks: list[Block] = []
    builder = DagBuilder(chunk_size=chunk_size, max_links=max_links, on_block=blocks.append)
    builder.write(data)
    return builder.finish(), blocks


def root_multihash(data: bytes) -> bytes:
    builder = DagBuilder()
    builder.write(data)
    return builder.finish()
