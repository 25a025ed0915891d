"""Closed-loop load for the serving benchmarks: N clients, each sending its
requests one after another, so concurrency stays at N for the whole run."""

from __future__ import annotations

import asyncio
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
