"""Pure tests of the UnixFS DAG builder and the CID helpers (no node involved).

The CIDs themselves are checked against real nodes in test_embedded.py and
test_rpc.py; here the shape of the tree is checked for sizes no test node
can hold (three and more levels, with a tiny chunk size and fan-out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiformats import CID, multihash

from nodeai.ipfs import (CidMismatchError, InvalidCidError, compute_cid, compute_file_cid, parse_cid, verify_cid,
                         verify_file_cid)
from nodeai.ipfs.unixfs import (TYPE_FILE, Block, DagBuilder, DagFormatError, _read_varint, _varint, build,
                                decode_node, encode_dag_pb, encode_unixfs, leaf_frame, sha256_multihash)

EMPTY_FILE_CID = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"  # `ipfs add` of an empty file, any kubo


def _walk(root: bytes, blocks: dict[bytes, bytes], depth: int = 0) -> tuple[bytes, list[int], int]:
    """Reassemble a file; return (content, depth of every leaf, cumulative size of root)."""
    node = decode_node(blocks[root])
    assert node.type == TYPE_FILE
    if not node.links:
        assert node.filesize == len(node.data)
        return node.data, [depth], len(blocks[root])
    content, depths, tsize = b"", [], len(blocks[root])
    for link, size in zip(node.links, node.blocksizes, strict=True):
        child, child_depths, child_tsize = _walk(link.multihash, blocks, depth + 1)
        assert len(child) == size
        assert link.tsize == child_tsize
        assert link.name == ""
        content += child
        depths += child_depths
        tsize += child_tsize
    assert node.data == b""
    assert node.filesize == len(content)
    return content, depths, tsize


@settings(max_examples=100)
@given(data=st.binary(max_size=400), chunk_size=st.integers(1, 9), max_links=st.integers(2, 5))
def test_balanced_dag_holds_the_file_with_leaves_at_one_depth(data: bytes, chunk_size: int, max_links: int) -> None:
    root, emitted = build(data, chunk_size=chunk_size, max_links=max_links)
    blocks = {block.multihash: block.data for block in emitted}
    assert all(sha256_multihash(block.data) == block.multihash for block in emitted)
    content, depths, _ = _walk(root, blocks)
    assert content == data
    assert len(set(depths)) == 1, "balanced layout: every leaf at the same depth"
    chunks = max(1, -(-len(data) // chunk_size))
    assert len(depths) == chunks
    # The tree is exactly as deep as needed: max_links**(depth-1) < chunks <= max_links**depth.
    depth = depths[0]
    assert chunks <= max_links**depth
    assert depth == 0 or chunks > max_links ** (depth - 1)


@settings(max_examples=60)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=8))
def test_builder_result_does_not_depend_on_how_the_input_is_sliced(data: bytes, cuts: list[int]) -> None:
    builder = DagBuilder(chunk_size=64, max_links=3)
    start = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        builder.write(data[start:cut])
        start = cut
    builder.write(data[start:])
    assert builder.finish() == build(data, chunk_size=64, max_links=3)[0]
    assert builder.size == len(data)


def test_left_filled_tree_closes_partial_subtrees_with_every_level() -> None:
    # 3 chunks with fan-out 2: root -> [full node(2 leaves), node -> leaf]; depth 2.
    root, emitted = build(b"abc", chunk_size=1, max_links=2)
    blocks = {block.multihash: block.data for block in emitted}
    top = decode_node(blocks[root])
    assert top.blocksizes == (2, 1)
    right = decode_node(blocks[top.links[1].multihash])
    assert len(right.links) == 1 and right.blocksizes == (1,)
    # exactly full at 4 chunks: the root is the full depth-2 node, not wrapped again
    root4, emitted4 = build(b"abcd", chunk_size=1, max_links=2)
    assert len(decode_node({b.multihash: b.data for b in emitted4}[root4]).links) == 2


def test_known_vectors() -> None:
    assert compute_cid(b"") == EMPTY_FILE_CID
    # one 1-byte leaf, written out by hand: dag-pb Data{UnixFS{Type=File, Data="x", filesize=1}}
    block = bytes.fromhex("0a0708021201781801")
    assert encode_dag_pb((), encode_unixfs(TYPE_FILE, b"x", 1)) == block
    assert compute_cid(b"x") == str(CID("base58btc", 0, "dag-pb", sha256_multihash(block)))


@given(st.integers(0, 2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    encoded = _varint(value)
    assert _read_varint(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize("block, reason", [
    (b"\x0a\x02\x08\x01", "type 1"),  # a UnixFS directory
    (b"\x12\x00", "without UnixFS data"),
    (b"\x0b", "wire type 3"),
    (b"\x0a\x05\x08", "truncated"),
])
def test_decode_rejects_what_is_not_a_file(block: bytes, reason: str) -> None:
    with pytest.raises(DagFormatError, match=reason):
        decode_node(block)


@settings(max_examples=50)
@given(data=st.binary(max_size=2000), flip=st.integers(0, 1999))
def test_verify_cid_accepts_the_content_and_names_both_cids_otherwise(data: bytes, flip: int) -> None:
    cid = compute_cid(data)
    verify_cid(data, cid)
    if not data:
        return
    index = flip % len(data)
    corrupted = data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]
    with pytest.raises(CidMismatchError) as info:
        verify_cid(corrupted, cid)
    assert info.value.expected == cid
    assert info.value.actual == compute_cid(corrupted)
    assert cid in str(info.value) and info.value.actual in str(info.value)


def test_cidv1_of_the_same_dag_and_raw_blocks_are_accepted() -> None:
    data = b"model weights" * 50_000
    v0 = parse_cid(compute_cid(data))
    v1 = str(CID("base32", 1, "dag-pb", v0.digest))
    verify_cid(data, v1)
    raw = str(CID("base32", 1, "raw", multihash.digest(b"tiny", "sha2-256")))
    verify_cid(b"tiny", raw)
    with pytest.raises(CidMismatchError, match=raw):
        verify_cid(b"tinY", raw)
    with pytest.raises(CidMismatchError) as info:
        verify_cid(b"other", v1)
    assert info.value.actual.startswith("bafy"), "the actual CID is shown in the version asked for"


@pytest.mark.parametrize("bad, reason", [
    ("", "non-empty"),
    ("not-a-cid", "not a usable CID"),
    ("Qm" + "1" * 44, "not a usable CID"),
    (str(CID("base32", 1, "dag-cbor", multihash.digest(b"x", "sha2-256"))), "codec dag-cbor"),
    (str(CID("base32", 1, "raw", multihash.digest(b"x", "sha2-512"))), "sha2-512"),
])
def test_parse_cid_explains_what_is_wrong(bad: str, reason: str) -> None:
    with pytest.raises(InvalidCidError, match=reason) as info:
        parse_cid(bad)
    assert isinstance(info.value, ValueError)


@settings(max_examples=10)
@given(data=st.binary(max_size=600_000))
def test_file_cid_equals_bytes_cid(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("cid") / "artifact.bin"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    assert compute_file_cid(path, progress=lambda done, total: seen.append((done, total))) == compute_cid(data)
    verify_file_cid(path, compute_cid(data))
    if data:
        assert seen[-1] == (len(data), len(data))


def test_blocks_are_handed_out_as_made(tmp_path: Path) -> None:
    made: list[Block] = []
    builder = DagBuilder(chunk_size=4, max_links=2, on_block=made.append, keep_leaves=True)
    builder.write(b"0123456789")
    root = builder.finish()
    assert made[-1].multihash == root
    assert [leaf.size for leaf in builder.leaves or []] == [4, 4, 2]
    assert builder.finish() == root, "finish is idempotent"
    with pytest.raises(RuntimeError):
        builder.write(b"more")


@given(data=st.one_of(st.none(), st.binary(max_size=300)))
def test_leaf_frame_is_the_encoded_leaf_around_its_data(data: bytes | None) -> None:
    size = len(data) if data is not None else 0
    prefix, suffix = leaf_frame(size, data is not None)
    assert prefix + (data or b"") + suffix == encode_dag_pb((), encode_unixfs(TYPE_FILE, data, size))
