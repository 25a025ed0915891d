"""What the benchmarks share: closed-loop load for the serving benchmarks (N
clients, each sending its requests one after another, so concurrency stays at
N for the whole run), percentiles of latencies, and stopping a process they
started.

The benchmarks import it as ``loadgen`` (scripts/bench/ is on ``sys.path``
when one of them is run as a script)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Awaitable, Callable


async def closed_loop(call: Callable[[int], Awaitable[None]], concurrency: int, per_client: int) -> tuple[list[float], float]:
    """Latencies (s) of every request and the wall time of the whole run."""
    latencies: list[float] = []

    async def client(c: int) -> None:
        for i in range(per_client):
            t0 = time.perf_counter()
            await call(c * per_client + i)
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return latencies, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values``, interpolated between the two nearest ranks
    (so ``percentile(values, 50)`` is ``statistics.median(values)``)."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``process`` if it still runs; kill it when it has not exited ``timeout`` seconds later."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
