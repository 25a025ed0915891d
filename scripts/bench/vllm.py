"""vLLM (CPU) benchmark through `VllmEngine`: start-up, memory, latency and throughput.

Starts a real vLLM from .venv-vllm serving SmolLM2-135M-Instruct (converted
from the packaged GGUF by `make setup-vllm`), then sends completions of exactly
16 tokens (greedy, ``max_tokens=16``; every answer is checked to end with
finish_reason "length", so an early end-of-text cannot flatter the figures)
from closed-loop clients: at concurrency 1 the p50 latency, at concurrency 8
the requests per second (8 clients, each sending its next request when its last
one returned). Memory is the resident set of the whole process group (API
server, engine core, worker) and its proportional share (PSS, which does not
count shared pages twice).

Timings on a shared 2-core machine are noisy (other engineers' builds and
tests run at the same time): the load average before and after is printed
with the figures.

Last line: one JSON object: startup_s, rss_mib, pss_mib, gen_p50_ms_c1,
gen_rps_c1, gen_p50_ms_c8, gen_rps_c8, load averages and the settings used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nodeai.serving.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from nodeai.serving.engines.vllm import VllmConfig, VllmEngine, process_group_members  # noqa: E402
from loadgen import closed_loop  # noqa: E402 - scripts/bench/ is on sys.path when run

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the Roman Empire begins",
    "Here is a recipe for a simple tomato soup:",
    "The three most important ideas in computer science are",
    "In the morning the market opens and",
    "A good way to learn a new language is",
    "The mountains in winter look",
    "Dear friend, I am writing to tell you",
]


def group_memory_mib(pgid: int) -> tuple[float, float]:
    """(RSS, PSS) of every live process of the group, in MiB."""
    rss = pss = 0
    for pid in process_group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return round(rss / 1024, 1), round(pss / 1024, 1)


async def bench(engine: VllmEngine, requests: int) -> dict[str, float]:
    async def call(i: int) -> None:
        text = PROMPTS[i % len(PROMPTS)]
        request = GenerationRequest(model=engine.config.served_model_name, prompt=text,
                                    params=SamplingParams(max_tokens=16, temperature=0.0))  # fmt: skip
        result = await engine.complete(request)
        if result.finish_reason != "length" or result.usage.completion_tokens != 16:
            # NOTE: an answer that ends early would flatter the figure.
            raise SystemExit(f"{text!r} ended after {result.usage.completion_tokens} tokens; pick other prompts")

    await closed_loop(call, 1, 3)  # warm-up
    lat1, wall1 = await closed_loop(call, 1, requests)
    lat8, wall8 = await closed_loop(call, 8, max(1, requests // 2))
    return {
        "gen_p50_ms_c1": round(1000 * statistics.median(lat1), 1),
        "gen_rps_c1": round(len(lat1) / wall1, 2),
        "gen_p50_ms_c8": round(1000 * statistics.median(lat8), 1),
        "gen_rps_c8": round(len(lat8) / wall8, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=16,
                        help="requests at concurrency 1 (half as many per client at 8)")  # fmt: skip
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true", help="let vLLM torch.compile (slow start: minutes more)")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--env", action="append", default=[],
                        help="environment for vLLM, e.g. --env VLLM_CPU_NUM_OF_RESERVED_CPU=0")  # fmt: skip
    parser.add_argument("--extra-arg", action="append", default=[],
                        help="more api_server flags, e.g. --extra-arg=--max-num-seqs=16")  # fmt: skip
    args = parser.parse_args()

    config = VllmConfig(dtype=args.dtype, enforce_eager=not args.compile, kv_cache_gib=args.kv_cache_gib,
                        extra_args=tuple(args.extra_arg), env=dict(e.split("=", 1) for e in args.env),
                        startup_timeout_s=1800.0)  # fmt: skip
    load_before = os.getloadavg()
    engine = VllmEngine(config)
    t0 = time.perf_counter()
    await engine.start()
    results: dict[str, object] = {"startup_s": round(time.perf_counter() - t0, 1)}
    try:
        assert engine.pid is not None
        results["rss_mib"], results["pss_mib"] = group_memory_mib(engine.pid)
        results.update(await bench(engine, args.requests))
        results["rss_mib_after"], results["pss_mib_after"] = group_memory_mib(engine.pid)
    finally:
        await engine.close()
    results["loadavg_1m_before"] = round(load_before[0], 2)
    results["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    results["settings"] = {
        "cpus": os.cpu_count(),
        "dtype": config.dtype,
        "enforce_eager": config.enforce_eager,
        "kv_cache_gib": config.kv_cache_gib,
        "max_model_len": config.max_model_len,
        "extra_args": list(config.extra_args),
        "env": dict(config.env),
        "requests_c1": args.requests,
        "requests_c8": 8 * max(1, args.requests // 2),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
