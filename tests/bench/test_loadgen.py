"""scripts/bench/loadgen.py: what the benchmarks share (they import it as ``loadgen``)."""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

# NOTE: loaded from its file, not by putting scripts/bench/ on sys.path, where
# node.py, serving.py... would shadow other modules for the rest of the session.
_spec = importlib.util.spec_from_file_location(
    "bench_loadgen", Path(__file__).resolve().parents[2] / "scripts" / "bench" / "loadgen.py")
assert _spec is not None and _spec.loader is not None
loadgen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loadgen)
closed_loop, percentile, stop_process = loadgen.closed_loop, loadgen.percentile, loadgen.stop_process


def test_percentile_interpolates_between_ranks() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile(values, 50) == statistics.median(values)
    assert percentile(values, 90) == pytest.approx(7.5)  # rank 4.5: halfway between 5 and 10
    assert percentile([7.0], 99) == 7.0


def test_closed_loop_runs_every_request_once() -> None:
    seen: list[int] = []

    async def call(i: int) -> None:
        await asyncio.sleep(0)
        seen.append(i)

    latencies, wall = asyncio.run(closed_loop(call, 3, 4))
    assert sorted(seen) == list(range(12)) and len(latencies) == 12 and wall >= max(latencies)


def test_stop_process_ends_a_running_process_and_leaves_an_ended_one() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop_process(process, timeout=5)
    assert process.returncode is not None
    stop_process(process)
