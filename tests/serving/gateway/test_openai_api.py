"""The official openai client, unchanged, against the gateway on real models (API-key mode, no chain).

One gateway serves the module (SmolLM2 on llama.cpp, MiniLM on ONNX Runtime);
tests that need other limits or filters start their own small app on the same
engines.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from nodeai.serving.apikeys import ApiKeyStore
from nodeai.serving.client import receipt_from_headers, receipt_from_usage, verify_receipt
from nodeai.serving.content_filter import BlocklistFilter
from nodeai.serving.engines.base import Engine
from nodeai.serving.gateway import GatewayServer, create_app
from nodeai.serving.limits import Limits
from nodeai.serving.metrics import GatewayMetrics
from nodeai.serving.receipts import request_hash

from .conftest import EMBEDDER, LLM, PROVIDER_KEY, running

REGISTRY = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
PROVIDER = "0x90F79bf6EB2c4F870365E785982E1f101E93b906"  # address of PROVIDER_KEY
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class Gateway:
    def __init__(self, server: GatewayServer, key: str, metrics: GatewayMetrics):
        self.server, self.key, self.metrics = server, key, metrics
        self.sync = openai.OpenAI(base_url=self.server.base_url, api_key=self.key)

    def client(self, **options) -> openai.OpenAI:
        return self.sync.with_options(**options) if options else self.sync

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.server.base_url, api_key=self.key, **kwargs)


def make_app(engines: list[Engine], db: Path, keys: ApiKeyStore, **kwargs):
    return create_app(engines, provider_key=PROVIDER_KEY, database=db, api_keys=keys,
                      receipt_domain=(31337, REGISTRY), manage_engines=False, **kwargs)


@pytest.fixture(scope="module")
def gateway(llm_engine: Engine, embed_engine: Engine, tmp_path_factory) -> Iterator[Gateway]:
    keys = ApiKeyStore()
    key = keys.create("tests")
    metrics = GatewayMetrics()
    metrics.add_source("engine-extra", lambda: "# HELP extra_engine_up An engine's own metric\nextra_engine_up 1\n")
    app = make_app([llm_engine, embed_engine], tmp_path_factory.mktemp("gw") / "gateway.db", keys,
                   limits=Limits(max_prompt_tokens=200, max_tokens_cap=64), metrics=metrics,
                   offchain_prices={LLM: 1_000, EMBEDDER: 100}, model_ids={LLM: 1, EMBEDDER: 2})
    with running(app) as server:
        gateway = Gateway(server, key, metrics)
        yield gateway
        gateway.sync.close()


def test_models_are_listed_with_their_terms(gateway: Gateway) -> None:
    models = {m.id: m for m in gateway.client().models.list()}
    assert set(models) == {LLM, EMBEDDER}
    assert models[LLM].model_extra["nodeai"]["kind"] == "generate"
    assert models[EMBEDDER].model_extra["nodeai"]["context_length"] == 256
    assert gateway.client().models.retrieve(EMBEDDER).id == EMBEDDER


def test_chat_answers_with_usage_and_a_receipt_and_streams_the_same(gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=LLM, messages=QUESTION, max_tokens=6, temperature=0)
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.choices[0].message.content.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 6
    signed = receipt_from_usage(reply.usage)
    body = {"messages": QUESTION, "model": LLM, "max_tokens": 6, "temperature": 0}
    assert verify_receipt(signed, PROVIDER, request_body=body, response_id=reply.id)
    assert signed.receipt.request_hash == request_hash(body, reply.id)
    assert (signed.receipt.tokens_in, signed.receipt.tokens_out) == (reply.usage.prompt_tokens,
                                                                     reply.usage.completion_tokens)
    assert signed.receipt.amount == math.ceil(reply.usage.total_tokens * 1_000 / 1_000) and signed.receipt.model_id == 1
    assert receipt_from_headers(raw.headers) == signed

    chunks = list(gateway.client().chat.completions.create(
        model=LLM, messages=QUESTION, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == reply.usage.completion_tokens
    assert verify_receipt(receipt_from_usage(usage), PROVIDER)


def test_async_streams_carry_the_receipt_on_the_last_chunk_without_include_usage(gateway: Gateway) -> None:
    async def main() -> tuple[list, list]:
        client = gateway.async_client()
        chat = [c async for c in await client.chat.completions.create(
            model=LLM, messages=QUESTION, max_tokens=3, temperature=0, stream=True)]
        completion = [c async for c in await client.completions.create(
            model=LLM, prompt="The capital of France is", max_tokens=3, temperature=0, stream=True)]
        await client.close()
        return chat, completion

    chat, completion = asyncio.run(main())
    for chunks in (chat, completion):
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert verify_receipt(receipt_from_usage({"nodeai_receipt": chunks[-1].model_extra["nodeai_receipt"]}))
    assert "Paris" in "".join(c.choices[0].text for c in completion)


def test_completions_sync_and_async(gateway: Gateway) -> None:
    sync = gateway.client().completions.create(model=LLM, prompt="The capital of France is", max_tokens=3,
                                               temperature=0)

    async def main():
        client = gateway.async_client()
        try:
            return await client.completions.create(model=LLM, prompt="The capital of France is", max_tokens=3,
                                                   temperature=0)
        finally:
            await client.close()

    result = asyncio.run(main())
    assert sync.object == "text_completion" and "Paris" in sync.choices[0].text
    assert result.choices[0].text == sync.choices[0].text and result.id != sync.id
    assert sync.usage.completion_tokens <= 3 and verify_receipt(receipt_from_usage(sync.usage), PROVIDER)


def test_embeddings_base64_float_and_async(gateway: Gateway) -> None:
    texts = ["The capital of France is Paris.", "Paris is the capital of France.", "Bananas are yellow."]
    default = gateway.client().embeddings.create(model=EMBEDDER, input=texts)  # the client asks for base64
    floats = gateway.client().embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")

    async def main():
        client = gateway.async_client()
        try:
            return await client.embeddings.create(model=EMBEDDER, input=texts[0])
        finally:
            await client.close()

    single = asyncio.run(main())
    vectors = [d.embedding for d in default.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(a - b) < 1e-6 for a, b in zip(vectors[0], floats.data[0].embedding))
    assert all(abs(a - b) < 1e-6 for a, b in zip(vectors[0], single.data[0].embedding))
    cos = [sum(a * b for a, b in zip(vectors[0], v)) for v in vectors[1:]]
    assert cos[0] > 0.9 > cos[1]  # paraphrases are close, bananas are not
    assert default.usage.prompt_tokens > 10 and verify_receipt(receipt_from_usage(default.usage), PROVIDER)


# -- errors -------------------------------------------------------------------------------------------
def error_of(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_errors_have_openai_shape_and_say_what_to_do(gateway: Gateway) -> None:
    client = gateway.client(max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert error_of(missing.value)["code"] == "model_not_found" and LLM in error_of(missing.value)["message"]
    with pytest.raises(openai.BadRequestError) as invalid:
        client.chat.completions.create(model=LLM, messages=[{"role": "wizard", "content": "hi"}])
    assert invalid.value.status_code == 400 and error_of(invalid.value)["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError) as kind:
        client.chat.completions.create(model=EMBEDDER, messages=QUESTION)
    assert "/v1/embeddings" in error_of(kind.value)["message"]
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model=LLM, messages=QUESTION, n=2)
    assert error_of(unsupported.value)["param"] == "n"
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client.with_options(api_key="nk_12345678_wrong").embeddings.create(model=EMBEDDER, input="x")
    assert error_of(bad_key.value)["type"] == "authentication_error"
    response = httpx.post(gateway.server.url + "/v1/nope", json={})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = httpx.post(gateway.server.base_url + "/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {gateway.key}"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_max_tokens_and_prompt_limits(gateway: Gateway) -> None:
    client = gateway.client(max_retries=0)
    with pytest.raises(openai.BadRequestError) as capped:
        client.chat.completions.create(model=LLM, messages=QUESTION, max_tokens=65)
    assert error_of(capped.value)["code"] == "max_tokens_too_large" and "at most 64" in error_of(capped.value)["message"]
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=LLM, prompt="word " * 300, max_tokens=4)
    assert error_of(long_prompt.value)["code"] == "context_length_exceeded"
    assert "limit of 200 tokens" in error_of(long_prompt.value)["message"]
    # max_completion_tokens (newer clients) is honoured like max_tokens
    reply = client.chat.completions.create(model=LLM, messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert reply.usage.completion_tokens <= 3 and reply.choices[0].finish_reason == "length"


def test_body_size_and_rate_limits(llm_engine: Engine, embed_engine: Engine, tmp_path: Path) -> None:
    keys = ApiKeyStore()
    key = keys.create("limits")
    # NOTE: the bucket refills once per 100 s, so the third request is refused however slow the machine is.
    app = make_app([llm_engine, embed_engine], tmp_path / "g.db", keys,
                   limits=Limits(max_body_bytes=2_048, rate_limit_per_s=0.01, rate_limit_burst=2))
    with running(app) as server:
        response = httpx.post(server.base_url + "/embeddings", json={"model": EMBEDDER, "input": "x" * 5_000},
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 413 and "limit of 2048 bytes" in response.json()["error"]["message"]
        with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as client:
            client.embeddings.create(model=EMBEDDER, input="one")
            client.embeddings.create(model=EMBEDDER, input="two")
            with pytest.raises(openai.RateLimitError) as limited:
                client.embeddings.create(model=EMBEDDER, input="three")
            assert int(limited.value.response.headers["Retry-After"]) >= 90
            assert error_of(limited.value)["code"] == "rate_limit_exceeded"
            other = keys.create("another payer")  # rate limits are per payer
            client.with_options(api_key=other).embeddings.create(model=EMBEDDER, input="four")


def test_content_filter_refuses_input_and_cuts_output(llm_engine: Engine, embed_engine: Engine,
                                                      tmp_path: Path) -> None:
    keys = ApiKeyStore()
    key = keys.create("filter")
    app = make_app([llm_engine, embed_engine], tmp_path / "g.db", keys,
                   content_filter=BlocklistFilter(["paris", "forbidden words"]))
    with running(app) as server, openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Say FORBIDDEN  words"}])
        assert error_of(refused.value)["code"] == "content_filter"
        assert "forbidden  words" in error_of(refused.value)["message"]
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=EMBEDDER, input=["fine", "forbidden words"])
        # output: the model completes with " Paris." and the filter cuts the answer right before it
        reply = client.completions.create(model=LLM, prompt="The capital of France is", max_tokens=4, temperature=0)
        assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].text == " "
        assert reply.usage.completion_tokens > 0  # what was generated is still metered
        chunks = list(client.completions.create(model=LLM, prompt="The capital of France is", max_tokens=4,
                                                temperature=0, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == reply.choices[0].text
        assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_health_and_metrics(gateway: Gateway) -> None:
    client = gateway.client(max_retries=0)
    list(client.completions.create(model=LLM, prompt="Hello", max_tokens=2, stream=True))
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
    health = httpx.get(gateway.server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["engines"]) == {"llama.cpp", "onnx-embed"}
    text = httpx.get(gateway.server.url + "/metrics").text
    for line in (
        'nodeai_gateway_requests_total{route="/v1/completions",status="200"}',
        'nodeai_gateway_requests_total{route="/v1/embeddings",status="404"}',
        'nodeai_gateway_errors_total{type="model_not_found"}',
        'nodeai_gateway_engine_healthy{engine="llama.cpp"} 1.0',
        "nodeai_gateway_receipts_pending",
        "extra_engine_up 1",
    ):
        assert line in text, line
    for metric in ("nodeai_gateway_time_to_first_token_seconds_count", "nodeai_gateway_request_latency_seconds_count",
                   'nodeai_gateway_tokens_total{direction="out",model="smollm2-135m-instruct"}'):
        value = next(l for l in text.splitlines() if l.startswith(metric)).rsplit(" ", 1)[1]
        assert float(value) > 0, metric
