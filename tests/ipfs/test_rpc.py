"""KuboRpcStore against a real IPFS daemon serving the kubo RPC API on 127.0.0.1.

No kubo daemon binary can be installed here from PyPI, npm or Debian (the
npm ``kubo``/``go-ipfs`` packages and ``basic-ipfs`` download it from
dist.ipfs.tech at install or first use), so the daemon is js-ipfs 0.66: an
independent IPFS implementation whose HTTP server implements the same
``/api/v0`` calls. Its importer is independent of ours too, so the CIDs it
returns cross-check :func:`compute_cid`.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeai.ipfs import (ArtifactNotFoundError, CidMismatchError, EmbeddedKuboStore, IpfsError, KuboRpcStore,
                         StoreClosedError, compute_cid, parse_cid)
from nodeai.ipfs.unixfs import CHUNK_SIZE
from tests.ipfs.conftest import JsIpfsDaemon

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rpc(jsipfs: JsIpfsDaemon, publisher: EmbeddedKuboStore) -> Iterator[KuboRpcStore]:
    # NOTE: asks for the session's publisher too, so that session fixtures are
    # all set up before this module-scoped one (ape's pytest plugin, loaded in
    # this venv, warns otherwise).
    with KuboRpcStore(jsipfs.api_url) as store:
        yield store


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 1])
def test_round_trip_and_cids_agree_with_an_independent_importer(rpc: KuboRpcStore, size: int) -> None:
    data = os.urandom(size)
    cid = rpc.add_bytes(data)
    assert cid == compute_cid(data)
    assert rpc.get_bytes(cid) == data
    assert rpc.has(cid)


@settings(max_examples=8, deadline=None)
@given(data=st.binary(max_size=3 * CHUNK_SIZE))
def test_cids_agree_for_any_content(rpc: KuboRpcStore, data: bytes) -> None:
    assert rpc.add_bytes(data, pin=False) == compute_cid(data)


def test_fetch_file_and_add_file_report_progress(rpc: KuboRpcStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(os.urandom(3 * CHUNK_SIZE + 11))
    added: list[tuple[int, int]] = []
    cid = rpc.add_file(source, progress=lambda d, t: added.append((d, t)))
    assert cid == compute_cid(source.read_bytes())
    assert added[-1] == (source.stat().st_size,) * 2
    fetched: list[tuple[int, int]] = []
    dest = rpc.fetch_file(cid, tmp_path / "out" / "w.bin", progress=lambda d, t: fetched.append((d, t)))
    assert dest.read_bytes() == source.read_bytes()
    size = source.stat().st_size
    assert fetched[-1] == (size, size) and all(total == size for _, total in fetched)
    assert list(dest.parent.iterdir()) == [dest]


def test_missing_cid_times_out(rpc: KuboRpcStore, tmp_path: Path) -> None:
    cid = compute_cid(b"held by nobody " + os.urandom(8))
    assert not rpc.has(cid)
    started = time.monotonic()
    with pytest.raises(ArtifactNotFoundError, match=cid):
        rpc.get_bytes(cid, timeout=1.0)
    assert time.monotonic() - started >= 1.0
    with pytest.raises(ArtifactNotFoundError, match="root block"):
        rpc.fetch_file(cid, tmp_path / "x", timeout=0.5, progress=lambda d, t: None)
    assert not (tmp_path / "x").exists()


def test_daemon_fetches_from_the_embedded_publisher(rpc: KuboRpcStore, publisher: EmbeddedKuboStore) -> None:
    data = os.urandom(600_000)
    cid = publisher.add_bytes(data)
    assert not rpc.has(cid)
    rpc.connect(publisher.multiaddrs()[0])
    assert rpc.get_bytes(cid, timeout=30) == data
    assert rpc.has(cid)


def test_corrupted_daemon_block_is_never_returned(rpc: KuboRpcStore, jsipfs: JsIpfsDaemon) -> None:
    data = os.urandom(CHUNK_SIZE + 500)
    cid = rpc.add_bytes(data)
    repo = jsipfs.repo
    # js-ipfs keeps blocks in flatfs too: find the second leaf by its content and flip a byte.
    tail = data[-400:]
    victims = [p for p in (repo / "blocks").rglob("*.data") if tail in p.read_bytes()]
    assert len(victims) == 1
    raw = bytearray(victims[0].read_bytes())
    at = bytes(raw).index(tail)
    raw[at] ^= 0xFF
    victims[0].write_bytes(bytes(raw))
    with pytest.raises(CidMismatchError) as info:
        rpc.get_bytes(cid)
    assert info.value.expected == cid and info.value.actual in str(info.value)
    assert parse_cid(info.value.actual)


def test_unreachable_or_closed_daemon_is_explained() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # the port is free again: nothing listens there
    with KuboRpcStore(f"http://127.0.0.1:{port}") as store:
        with pytest.raises(IpfsError, match="no IPFS RPC API answers"):
            store.add_bytes(b"x")
    with pytest.raises(StoreClosedError):
        store.get_bytes(compute_cid(b"x"))
    with pytest.raises(ValueError, match="http"):
        KuboRpcStore("127.0.0.1:5001")
