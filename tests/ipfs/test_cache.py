"""CachedStore in front of real embedded kubo nodes: hits, misses, LRU bound, corruption."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeai.ipfs import (ArtifactNotFoundError, CachedStore, EmbeddedKuboStore, StoreClosedError, compute_cid)

ARTIFACT_SIZES = [3_000, 5_000, 7_000, 11_000, 13_000]


@pytest.fixture(scope="module")
def origin() -> Iterator[EmbeddedKuboStore]:
    root = Path(tempfile.mkdtemp(prefix="nodeai-cache-origin-"))
    try:
        with EmbeddedKuboStore(root / "repo", offline=True) as store:
            yield store
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cache(origin: EmbeddedKuboStore, cache_dir: Path, max_bytes: int) -> CachedStore:
    # NOTE: the origin node is shared by the whole module: caches must not close it.
    return CachedStore(origin, cache_dir, max_bytes=max_bytes, owns_inner=False)


@pytest.fixture(scope="module")
def artifacts(origin: EmbeddedKuboStore) -> dict[str, bytes]:
    out = {}
    for size in ARTIFACT_SIZES:
        data = os.urandom(size)
        out[origin.add_bytes(data)] = data
    return out


def test_miss_then_hit_with_counters(origin: EmbeddedKuboStore, artifacts: dict[str, bytes], tmp_path: Path) -> None:
    cid, data = next(iter(artifacts.items()))
    with _cache(origin, tmp_path / "cache", 1_000_000) as cache:
        assert cache.get_bytes(cid) == data
        assert (cache.stats.hits, cache.stats.misses) == (0, 1)
        assert cache.get_bytes(cid) == data
        dest = cache.fetch_file(cid, tmp_path / "out" / "a.bin")
        assert dest.read_bytes() == data
        assert (cache.stats.hits, cache.stats.misses) == (2, 1)
        assert (tmp_path / "cache" / cid).read_bytes() == data
        assert cache.has(cid)
    with pytest.raises(StoreClosedError):
        cache.get_bytes(cid)


def test_corrupted_cache_file_is_detected_and_refetched(origin: EmbeddedKuboStore, artifacts: dict[str, bytes],
                                                        tmp_path: Path) -> None:
    cid, data = list(artifacts.items())[1]
    with _cache(origin, tmp_path / "cache", 1_000_000) as cache:
        cache.get_bytes(cid)
        cached = tmp_path / "cache" / cid
        cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # bit rot
        assert cache.get_bytes(cid) == data
        assert (cache.stats.corrupt, cache.stats.misses, cache.stats.hits) == (1, 2, 0)
        assert cached.read_bytes() == data, "the cache holds the good copy again"
        cached.write_bytes(b"truncated")
        progress: list[tuple[int, int]] = []
        dest = cache.fetch_file(cid, tmp_path / "model.bin", progress=lambda d, t: progress.append((d, t)))
        assert dest.read_bytes() == data and cache.stats.corrupt == 2
        assert progress[-1] == (len(data), len(data))


def test_artifacts_bigger_than_the_cache_pass_through(origin: EmbeddedKuboStore, tmp_path: Path) -> None:
    data = os.urandom(50_000)
    cid = origin.add_bytes(data)
    with _cache(origin, tmp_path / "cache", 10_000) as cache:
        assert cache.get_bytes(cid) == data
        assert cache.fetch_file(cid, tmp_path / "big.bin").read_bytes() == data
        assert cache.stats.entries == 0 and cache.stats.misses == 2
        assert list((tmp_path / "cache").iterdir()) == []


def test_recency_survives_a_restart(origin: EmbeddedKuboStore, artifacts: dict[str, bytes], tmp_path: Path) -> None:
    cids = list(artifacts)[:3]
    with _cache(origin, tmp_path / "cache", 1_000_000) as cache:
        for cid in cids:
            cache.get_bytes(cid)
        os.utime(tmp_path / "cache" / cids[1], (1, 1))  # an old mtime: least recently used
        (tmp_path / "cache" / ".tmp-left-by-a-crash").write_bytes(b"junk")
    with _cache(origin, tmp_path / "cache", 1_000_000) as again:
        assert again.cached_cids()[0] == cids[1]
        assert sorted(again.cached_cids()) == sorted(cids)
        assert not (tmp_path / "cache" / ".tmp-left-by-a-crash").exists()
    with _cache(origin, tmp_path / "cache", len(artifacts[cids[0]]) + 10) as small:
        assert small.stats.bytes <= small.max_bytes, "opening with a lower limit evicts"


def test_missing_cid_is_not_cached(origin: EmbeddedKuboStore, tmp_path: Path) -> None:
    with _cache(origin, tmp_path / "cache", 1_000) as cache:
        with pytest.raises(ArtifactNotFoundError):
            cache.get_bytes(compute_cid(b"not there"), timeout=0.2)
        assert cache.stats.entries == 0 and cache.stats.misses == 1
    with pytest.raises(ValueError, match="max_bytes"):
        CachedStore(origin, tmp_path / "c2", max_bytes=0)


@settings(max_examples=25, deadline=None)
@given(accesses=st.lists(st.integers(0, len(ARTIFACT_SIZES) - 1), min_size=1, max_size=14),
       limit=st.integers(3_000, 40_000))
def test_lru_eviction_keeps_the_byte_limit(origin: EmbeddedKuboStore, artifacts: dict[str, bytes],
                                           accesses: list[int], limit: int) -> None:
    cids = list(artifacts)
    root = Path(tempfile.mkdtemp(prefix="nodeai-lru-"))
    # A model of an LRU cache bounded in bytes, the newest entry always kept.
    model: OrderedDict[str, int] = OrderedDict()
    try:
        with _cache(origin, root, limit) as cache:
            for index in accesses:
                cid = cids[index]
                assert cache.get_bytes(cid) == artifacts[cid]
                size = len(artifacts[cid])
                if size <= limit:
                    model[cid] = size
                    model.move_to_end(cid)
                    while sum(model.values()) > limit:
                        model.popitem(last=False)
                stats = cache.stats
                assert stats.bytes <= limit
                assert cache.cached_cids() == list(model)
                assert sorted(p.name for p in root.iterdir()) == sorted(model)
            assert stats.hits + stats.misses == len(accesses)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_cache_in_front_of_a_network_fetch(publisher: EmbeddedKuboStore, provider: EmbeddedKuboStore,
                                           tmp_path: Path) -> None:
    data = os.urandom(700_000)
    cid = publisher.add_bytes(data)
    with CachedStore(provider, tmp_path / "cache", max_bytes=10_000_000, owns_inner=False) as cache:
        assert cache.fetch_file(cid, tmp_path / "m1").read_bytes() == data
        assert cache.fetch_file(cid, tmp_path / "m2").read_bytes() == data
        assert (cache.stats.misses, cache.stats.hits) == (1, 1)
    assert provider.has(cid), "the shared provider node is still running"
