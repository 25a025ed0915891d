"""Artifact store benchmark: a model-sized artifact from a publisher node to a provider node.

Two in-process kubo nodes (EmbeddedKuboStore), each with its own temporary
repo, connected over loopback TCP by multiaddr (no bootstrap, no routing).
For an artifact of ``--mb`` MB (default 20) of random bytes, median of
``--runs`` runs, each with fresh content:

* ``compute_cid``: the pure-Python UnixFS DAG hash (what verification costs);
* ``add``: publisher ``add_file`` (kubo import, pinning, plus our CID check);
* ``fetch``: provider ``fetch_file`` over the network (bitswap, then our CID
  re-check, then the atomic rename);
* ``cached_hit``: ``CachedStore.fetch_file`` of an artifact already in the
  cache (re-verified on every read).

Timings on a shared 2-core machine are noisy: compare runs, not single
numbers. Last line: one JSON object with MB/s and seconds for each step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nodeai.ipfs import CachedStore, EmbeddedKuboStore, compute_cid  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="artifact size in MB (10^6 bytes)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each with fresh random content")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    root = Path(tempfile.mkdtemp(prefix="nodeai-bench-ipfs-"))
    times: dict[str, list[float]] = {"compute_cid": [], "add": [], "fetch": [], "cached_hit": []}
    try:
        with EmbeddedKuboStore(root / "publisher") as publisher, EmbeddedKuboStore(root / "provider") as provider:
            provider.connect(publisher.multiaddrs()[0])
            cache = CachedStore(provider, root / "cache", max_bytes=4 * size, owns_inner=False)
            for run in range(args.runs):
                source = root / f"artifact-{run}.bin"
                source.write_bytes(os.urandom(size))
                data = source.read_bytes()
                started = time.perf_counter()
                expected = compute_cid(data)
                times["compute_cid"].append(time.perf_counter() - started)
                started = time.perf_counter()
                cid = publisher.add_file(source)
                times["add"].append(time.perf_counter() - started)
                assert cid == expected
                started = time.perf_counter()
                cache.fetch_file(cid, root / f"fetched-{run}.bin", timeout=120)
                times["fetch"].append(time.perf_counter() - started)
                started = time.perf_counter()
                cache.fetch_file(cid, root / f"hit-{run}.bin")
                times["cached_hit"].append(time.perf_counter() - started)
                assert (root / f"hit-{run}.bin").read_bytes() == data
            assert cache.stats.hits == args.runs and cache.stats.misses == args.runs
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, float | int | str] = {"artifact_mb": args.mb, "runs": args.runs, "backend": "EmbeddedKuboStore"}
    for step, values in times.items():
        median = statistics.median(values)
        result[f"{step}_s"] = round(median, 3)
        result[f"{step}_mb_per_s"] = round(args.mb / median, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
