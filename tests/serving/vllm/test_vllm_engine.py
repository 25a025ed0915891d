"""VllmEngine against a real vLLM (CPU) serving the real SmolLM2-135M-Instruct.

One vLLM is started for the whole module (2-4 minutes here, about 4 GB) and
restarted once, by the supervisor, after the test kills it with SIGKILL. The
engine lives in one event loop on a background thread, as it would in the
gateway; every call into it is bounded in time.

Needs `make setup-vllm` (the .venv-vllm environment and the converted model).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from typing import Any, Awaitable, Iterator, TypeVar

import pytest

from nodeai.errors import ContextLengthExceeded, EngineUnavailable, InvalidGenerationParams, ModelNotServed
from nodeai.serving.engines.base import ChatMessage, Completion, Delta, GenerationRequest, SamplingParams
from nodeai.serving.engines.vllm import VllmConfig, VllmEngine, process_group_members

pytestmark = pytest.mark.vllm

MODEL = "smollm2-135m-instruct"
T = TypeVar("T")


class LoopThread:
    """An event loop on a thread of its own, kept for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 300.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def engine(loop: LoopThread) -> Iterator[VllmEngine]:
    # NOTE: short health intervals and probe timeouts so the restart tests do not
    # wait long; the generous start-up timeout is for a 2-core machine shared with others.
    config = VllmConfig(health_interval_s=2.0, probe_timeout_s=15.0, failures_before_restart=2,
                        restart_backoff_s=0.5, term_grace_s=10.0, startup_timeout_s=1500.0)  # fmt: skip
    e = VllmEngine(config)
    try:
        loop.run(e.start(), timeout=1600)
        yield e
    finally:
        loop.run(e.close(), timeout=180)


def chat(text: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(model=MODEL, messages=(ChatMessage("user", text),), params=SamplingParams(**params))


def prompt(text: str, **params: Any) -> GenerationRequest:
    return GenerationRequest(model=MODEL, prompt=text, params=SamplingParams(**params))


async def collect(engine: VllmEngine, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.stream(request)]


def test_chat_completion_answers_and_counts_like_tokenize(engine: VllmEngine, loop: LoopThread) -> None:
    request = chat("What is the capital of France?", max_tokens=16)
    done: Completion = loop.run(engine.complete(request))
    assert "Paris" in done.text
    assert done.finish_reason == "stop"
    # Prompt tokens: the chat template applied, exactly as /tokenize counts it.
    assert done.usage.prompt_tokens == engine.count_tokens(MODEL, request)
    assert done.usage.prompt_tokens > engine.count_tokens(MODEL, "What is the capital of France?")
    # Completion tokens: the text's tokens plus the end-of-turn token that stopped it.
    assert done.usage.completion_tokens == engine.count_tokens(MODEL, done.text) + 1
    assert loop.run(engine.count_tokens_async(MODEL, request)) == done.usage.prompt_tokens


def test_completion_and_its_stream_agree(engine: VllmEngine, loop: LoopThread) -> None:
    request = prompt("The capital of France is", max_tokens=16)
    done = loop.run(engine.complete(request))
    assert done.text.strip().startswith("Paris")
    assert done.finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (engine.count_tokens(MODEL, request), 16)

    deltas = loop.run(collect(engine, request))
    assert len(deltas) > 2, "the answer came in one piece: not streamed"
    assert "".join(d.text for d in deltas) == done.text  # greedy: the same tokens
    assert all(d.usage is None and d.finish_reason is None for d in deltas[:-1])
    assert (deltas[-1].finish_reason, deltas[-1].usage) == ("length", done.usage)

    chat_deltas = loop.run(collect(engine, chat("What is the capital of France?", max_tokens=16)))
    assert "Paris" in "".join(d.text for d in chat_deltas) and chat_deltas[-1].finish_reason == "stop"


def test_concurrent_requests_are_batched_not_refused(engine: VllmEngine, loop: LoopThread) -> None:
    async def many() -> list[Completion]:
        return await asyncio.gather(*(engine.complete(prompt(f"Count to {i}:", max_tokens=8)) for i in range(8)))

    results = loop.run(many())
    assert [r.usage.completion_tokens for r in results] == [8] * 8


def test_errors_say_what_was_wrong(engine: VllmEngine, loop: LoopThread) -> None:
    with pytest.raises(ModelNotServed, match="use one of smollm2-135m-instruct"):
        loop.run(engine.complete(GenerationRequest(model="gpt-4", prompt="hi")))
    with pytest.raises(InvalidGenerationParams, match="temperature must be non-negative") as bad:
        loop.run(engine.complete(prompt("hi", temperature=-1.0)))
    assert bad.value.field == "temperature"
    with pytest.raises(ContextLengthExceeded, match="context of 2048 tokens"):
        loop.run(engine.complete(prompt("hello " * 2100)))
    with pytest.raises(ContextLengthExceeded):
        loop.run(collect(engine, prompt("hello " * 2100)))
    with pytest.raises(InvalidGenerationParams, match="not forwarded"):
        loop.run(engine.forward("POST", "/scale_elastic_ep", json_body={}))


def test_pass_through_and_metrics(engine: VllmEngine, loop: LoopThread) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "stream": True}

    async def relay() -> bytes:
        async with engine.forward_stream("POST", "/v1/chat/completions", json_body=body,
                                         headers={"Authorization": "Bearer client-key"}) as response:  # fmt: skip
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return b"".join([chunk async for chunk in response.aiter_raw()])

    raw = loop.run(relay())
    events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"

    short = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
    plain = loop.run(engine.forward("POST", "/v1/completions", json_body=short))
    assert plain.status_code == 200 and plain.json()["usage"]["completion_tokens"] == 2
    missing = loop.run(engine.forward("POST", "/v1/completions", json_body={"model": "nope", "prompt": "Hi"}))
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"

    text = loop.run(engine.metrics_text())
    assert "nodeai_vllm_up 1" in text
    assert "# TYPE vllm:generation_tokens counter" in text or "# TYPE vllm:generation_tokens_total counter" in text
    assert "process_resident_memory_bytes" not in text  # the gateway exports its own


def test_supervisor_restarts_vllm_after_sigkill(engine: VllmEngine, loop: LoopThread) -> None:
    old, server = engine.pid, engine.server_pid
    assert old is not None and server is not None and engine.restarts == 0
    os.kill(server, signal.SIGKILL)
    # Requests made while it is down fail fast with a 503-type error, they do not hang.
    with pytest.raises(EngineUnavailable):
        for _ in range(100):
            loop.run(engine.complete(prompt("Hi", max_tokens=1)), timeout=60)
            time.sleep(0.1)
    deadline = time.monotonic() + 30  # NOTE: the kernel tears the process down asynchronously
    while (down := loop.run(engine.health())).ok and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not down.ok and "exited with signal SIGKILL" in down.detail, down
    deadline = time.monotonic() + 1500
    while not (engine.restarts >= 1 and engine.state == "ready") and time.monotonic() < deadline:
        time.sleep(2)
    assert engine.state == "ready", loop.run(engine.health())
    assert engine.restarts == 1 and engine.pid not in (None, old)
    assert process_group_members(old) == []  # the orphaned engine core and workers went with it
    done = loop.run(engine.complete(chat("What is the capital of France?", max_tokens=16)))
    assert "Paris" in done.text
    health = loop.run(engine.health())
    assert health.ok and "1 restarts" in health.detail
    assert "nodeai_vllm_restarts_total 1" in loop.run(engine.metrics_text())


def test_supervisor_restarts_a_hung_vllm(engine: VllmEngine, loop: LoopThread) -> None:
    hung, server = engine.pid, engine.server_pid
    assert hung is not None and server is not None
    # A stopped API server still accepts connections (the kernel queues them) but never answers.
    os.kill(server, signal.SIGSTOP)
    deadline = time.monotonic() + 180
    while engine.restarts < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine.restarts == 2, loop.run(engine.health())
    health = loop.run(engine.health())
    assert not health.ok and "vLLM hung: 2 health probes failed" in health.detail
    assert process_group_members(hung) == []  # the stopped group was killed
    with pytest.raises(EngineUnavailable, match="restarting after: vLLM hung"):
        loop.run(engine.complete(prompt("Hi", max_tokens=1)))
    # NOTE: the new vLLM is starting now; the next test closes the engine in the middle of it.


def test_close_stops_every_process_even_mid_restart(engine: VllmEngine, loop: LoopThread) -> None:
    deadline = time.monotonic() + 60
    while engine.pid is None and time.monotonic() < deadline:
        time.sleep(0.2)
    pgid = engine.pid
    assert pgid is not None and process_group_members(pgid)
    loop.run(engine.close(), timeout=180)
    assert process_group_members(pgid) == []
    assert engine.state == "closed" and not loop.run(engine.health()).ok
    with pytest.raises(EngineUnavailable, match="closed"):
        loop.run(engine.complete(prompt("Hi")))
    loop.run(engine.close())  # idempotent


def test_vllm_dies_with_its_owner_even_when_the_owner_is_sigkilled() -> None:
    import subprocess
    import sys

    owner_code = (
        "import asyncio, time\n"
        "from nodeai.serving.engines.vllm import VllmConfig, VllmEngine\n"
        "e = VllmEngine(VllmConfig(startup_timeout_s=1500.0))\n"
        "asyncio.run(e.start())\n"
        "print(e.pid, flush=True)\n"
        "time.sleep(3600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True)
    pgid = 0
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()  # NOTE: blocks until vLLM answered its first completion
        assert line.strip().isdigit(), f"the owner did not start vLLM (exit {owner.poll()})"
        pgid = int(line)
        assert len(process_group_members(pgid)) >= 3  # guard, API server, engine core
        owner.kill()  # no close(), no finalizer, no atexit: only the guard can clean up
        owner.wait()
        deadline = time.monotonic() + 60
        while process_group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert process_group_members(pgid) == []
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
        if pgid and process_group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
