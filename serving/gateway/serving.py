"""The gateway's logic: OpenAI requests in, engine calls, metering, payment and receipts out.

Every served request follows the same path: resolve the model, turn the
OpenAI request into an engine request, apply the content filter and the
limits, count the prompt with the engine's tokenizer, have the ``Authorizer``
reserve the maximum price, run the engine, then settle the actual price and
sign the receipt (``_settle``), which also writes charge, voucher and receipt
in one transaction. A request that fails before anything was served releases
its reservation; a stream cut short by the client is charged for what was
generated.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import struct
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anyio
from pydantic import BaseModel

from nodeai.chain.receipts import Receipt
from nodeai.errors import ContextLengthExceeded, EngineUnavailable, InvalidGenerationParams, ModelNotServed

from ..content_filter import BlocklistFilter, ContentFilter, OutputGuard
from ..engines.base import ChatMessage, Engine, GenerationRequest, ModelCard, SamplingParams, Usage
from ..errors import BadRequest, ContentFiltered, GatewayError, Unavailable, UnknownModel
from ..limits import Limits, check_generation
from ..metrics import GatewayMetrics
from ..payments import price_for_tokens
from ..receipts import RECEIPT_HEADER, ReceiptSigner, SignedReceipt, encode_receipt_header, request_hash
from .auth import Authorizer, Charge
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelList,
    ModelOut,
    UsageOut,
)

__all__ = ["ServedModel", "GatewayService", "Served", "Streamed", "CHARGED_TOTAL_HEADER"]

log = logging.getLogger(__name__)

CHARGED_TOTAL_HEADER = "X-NodeAI-Charged-Total"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # NOTE: OpenAI's default for /v1/completions


@dataclass(frozen=True, slots=True)
class ServedModel:
    card: ModelCard
    engine: Engine
    model_id: int | None
    """The model's id in the on-chain ModelRegistry (None: not sold for vouchers)."""


@dataclass(frozen=True, slots=True)
class Served:
    """A complete response and the headers that go with it."""

    body: BaseModel
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Streamed:
    """Server-sent events (each item one ``data: ...`` event, already encoded)."""

    events: AsyncIterator[bytes]
    headers: dict[str, str]


def _sse(chunk: BaseModel | str) -> bytes:
    data = chunk if isinstance(chunk, str) else chunk.model_dump_json(exclude_none=False)
    return b"data: " + data.encode() + b"\n\n"


def _engine_error(exc: Exception) -> GatewayError:
    """Engine errors (nodeai.errors.ServingError) as gateway errors with their HTTP status."""
    if isinstance(exc, ModelNotServed):
        return UnknownModel(exc.model, exc.served)
    if isinstance(exc, ContextLengthExceeded):
        return BadRequest(str(exc), code="context_length_exceeded", param="max_tokens")
    if isinstance(exc, InvalidGenerationParams):
        return BadRequest(str(exc), param=exc.field)
    if isinstance(exc, EngineUnavailable):
        return Unavailable(str(exc))
    return Unavailable(f"the engine failed ({type(exc).__name__}: {exc}): retry, or tell the provider",
                       code="engine_error")


class GatewayService:
    def __init__(self, engines: Sequence[Engine], authorizer: Authorizer, signer: ReceiptSigner,
                 model_ids: Mapping[str, int] | None = None, limits: Limits | None = None,
                 content_filter: ContentFilter | None = None, metrics: GatewayMetrics | None = None):
        self.engines = list(engines)
        self.authorizer = authorizer
        self.signer = signer
        self.limits = limits or Limits()
        self.filter = content_filter if content_filter is not None else BlocklistFilter()
        self.metrics = metrics or GatewayMetrics()
        self.model_ids = dict(model_ids or {})
        self.models: dict[str, ServedModel] = {}

    def load_models(self) -> None:
        """Build the model table from the engines (after they started: some list models only then)."""
        models: dict[str, ServedModel] = {}
        for engine in self.engines:
            for card in engine.models():
                if card.id in models:
                    raise ValueError(f"model {card.id!r} is served by two engines ({models[card.id].engine.name} "
                                     f"and {engine.name}): give one of them another model name")
                models[card.id] = ServedModel(card, engine, self.model_ids.get(card.id))
        unknown = set(self.model_ids) - set(models)
        if unknown:
            raise ValueError(f"model_ids names models no engine serves: {sorted(unknown)}; served: {sorted(models)}")
        self.models = models

    # -- models and health ----------------------------------------------------------------------
    def _model(self, name: str, kind: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise UnknownModel(name, sorted(self.models))
        if served.card.kind != kind:
            endpoint = "/v1/embeddings" if served.card.kind == "embed" else "/v1/chat/completions or /v1/completions"
            raise BadRequest(f"model {name!r} is {'an embedding' if served.card.kind == 'embed' else 'a generation'} "
                             f"model: call it on {endpoint}", param="model", code="wrong_model_kind")
        return served

    async def list_models(self) -> ModelList:
        data = []
        for served in self.models.values():
            extra: dict[str, Any] = {"kind": served.card.kind, "context_length": served.card.context_length,
                                     "model_id": served.model_id}
            try:
                extra["price_per_1k"] = str(await self.authorizer.price(served.card.id, served.model_id))
            except GatewayError:
                extra["price_per_1k"] = None  # NOTE: the list stays available while the RPC is down
            data.append(ModelOut(id=served.card.id, created=0, owned_by=served.card.owned_by, nodeai=extra))
        return ModelList(data=data)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        engines: dict[str, Any] = {}
        ok = True
        for engine in self.engines:
            try:
                with anyio.fail_after(10):
                    health = await engine.health()
                engine_ok, detail = health.ok, health.detail
            except Exception as exc:  # NOTE: a hung or crashing health check is an unhealthy engine
                engine_ok, detail = False, f"{type(exc).__name__}: {exc}"
            self.metrics.engine_healthy.labels(engine=engine.name).set(1 if engine_ok else 0)
            engines[engine.name] = {"ok": engine_ok, "detail": detail}
            ok = ok and engine_ok
        return ok, {"status": "ok" if ok else "unavailable", "engines": engines, "provider": self.signer.address}

    # -- request translation --------------------------------------------------------------------
    @staticmethod
    def _stop(stop: str | list[str] | None) -> tuple[str, ...]:
        if stop is None:
            return ()
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        if len(stops) > 4:
            raise BadRequest(f"at most 4 stop sequences are accepted, got {len(stops)}", param="stop")
        return tuple(s for s in stops if s)

    @staticmethod
    def _refuse_unsupported(req: CompletionRequest | ChatCompletionRequest) -> None:
        if req.n not in (None, 1):
            raise BadRequest(f"n={req.n} is not supported: this provider returns one choice per request; "
                             "send several requests instead", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name) not in (None, 0, 0.0):
                raise BadRequest(f"{name} is not supported by this provider's engines: leave it out", param=name)
        if req.logit_bias:
            raise BadRequest("logit_bias is not supported by this provider's engines: leave it out", param="logit_bias")

    def _sampling(self, req: CompletionRequest | ChatCompletionRequest, json_schema: dict | None = None) -> SamplingParams:
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=self._stop(req.stop), seed=req.seed, json_schema=json_schema,
        )  # fmt: skip

    def _completion_request(self, req: CompletionRequest) -> GenerationRequest:
        self._refuse_unsupported(req)
        if req.echo:
            raise BadRequest("echo is not supported: prepend the prompt yourself", param="echo")
        if req.logprobs is not None or (req.best_of not in (None, 1)) or req.suffix:
            name = "logprobs" if req.logprobs is not None else "best_of" if req.best_of not in (None, 1) else "suffix"
            raise BadRequest(f"{name} is not supported by this provider: leave it out", param=name)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            else:
                raise BadRequest("prompt must be one string (a list of prompts or of token ids is not supported: "
                                 "send one request per prompt, as text)", param="prompt")
        return GenerationRequest(model=req.model, params=self._sampling(req), prompt=prompt)

    def _chat_request(self, req: ChatCompletionRequest) -> GenerationRequest:
        self._refuse_unsupported(req)
        if req.tools:
            raise BadRequest("tools are not supported by this provider's models: leave them out", param="tools")
        if req.logprobs or req.top_logprobs:
            raise BadRequest("logprobs are not supported by this provider: leave them out", param="logprobs")
        schema = None
        if req.response_format is not None and req.response_format.type != "text":
            if req.response_format.type == "json_object":
                schema = {}
            else:
                spec = req.response_format.json_schema or {}
                schema = spec.get("schema", {}) if isinstance(spec.get("schema", {}), dict) else {}
        messages = tuple(
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text()) for m in req.messages
        )
        return GenerationRequest(model=req.model, params=self._sampling(req, schema), messages=messages)

    def _check_input(self, texts: Sequence[str], param: str) -> None:
        reason = self.filter.check_input(texts)
        if reason is not None:
            self.metrics.errors.labels(type="content_filter").inc()
            raise ContentFiltered(reason, param)

    def _prepare(self, gen: GenerationRequest, served: ServedModel, max_tokens: int | None,
                 default: int) -> tuple[GenerationRequest, int]:
        try:
            prompt_tokens = served.engine.count_tokens(served.card.id, gen)
        except Exception as exc:
            raise _engine_error(exc) from exc
        limit = check_generation(self.limits, served.card.id, prompt_tokens, max_tokens,
                                 served.card.context_length, default)
        return replace(gen, params=replace(gen.params, max_tokens=limit)), prompt_tokens

    # -- settlement -----------------------------------------------------------------------------
    def _settle(self, charge: Charge, served: ServedModel, usage: Usage, raw_body: Any, response_id: str,
                started: float) -> tuple[dict[str, Any], int]:
        """Charge the actual price, sign and store the receipt; returns the receipt's wire form and the total."""
        latency_ms = int((time.perf_counter() - started) * 1000)
        actual = price_for_tokens(usage.total_tokens, charge.price_per_1k)

        def make_receipt(amount: int) -> SignedReceipt:
            return self.signer.sign(Receipt(
                request_hash=request_hash(raw_body, response_id), provider=self.signer.address,
                payer=charge.payer.address, model_id=charge.model_id, tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens, latency_ms=latency_ms, amount=amount, timestamp=int(time.time()),
            ))  # fmt: skip

        amount, total, _, wire = self.authorizer.ledger.settle(charge.reservation, actual, make_receipt)
        model = served.card.id
        self.metrics.tokens.labels(model=model, direction="in").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(model=model, direction="out").inc(usage.completion_tokens)
        self.metrics.charged.labels(model=model, mode=charge.payer.mode).inc(amount)
        return wire, total

    @staticmethod
    def _usage(usage: Usage, receipt: dict[str, Any], total: int) -> UsageOut:
        return UsageOut(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                        total_tokens=usage.total_tokens, nodeai_receipt=receipt, nodeai_charged_total=str(total))

    @staticmethod
    def _headers(receipt: dict[str, Any], total: int) -> dict[str, str]:
        return {RECEIPT_HEADER: encode_receipt_header(receipt), CHARGED_TOTAL_HEADER: str(total)}

    # -- completions and chat -------------------------------------------------------------------
    async def completions(self, req: CompletionRequest, raw_body: Any, headers: Mapping[str, str]) -> Served | Streamed:
        started = time.perf_counter()
        served = self._model(req.model, "generate")
        gen = self._completion_request(req)
        self._check_input([gen.prompt or ""], "prompt")
        gen, prompt_tokens = self._prepare(gen, served, req.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)

        def body(response_id: str, text: str, finish: str, usage: UsageOut) -> CompletionResponse:
            return CompletionResponse(id=response_id, model=served.card.id,
                                      choices=[CompletionChoice(text=text, finish_reason=finish)], usage=usage)

        return await self._generate(req, served, gen, prompt_tokens, raw_body, headers, started, "cmpl-", body)

    async def chat(self, req: ChatCompletionRequest, raw_body: Any, headers: Mapping[str, str]) -> Served | Streamed:
        started = time.perf_counter()
        served = self._model(req.model, "generate")
        gen = self._chat_request(req)
        self._check_input([m.content for m in gen.messages or ()], "messages")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        gen, prompt_tokens = self._prepare(gen, served, max_tokens, self.limits.default_max_tokens)

        def body(response_id: str, text: str, finish: str, usage: UsageOut) -> ChatCompletionResponse:
            return ChatCompletionResponse(id=response_id, model=served.card.id, usage=usage,
                                          choices=[ChatChoice(message=ChatMessageOut(content=text), finish_reason=finish)])

        return await self._generate(req, served, gen, prompt_tokens, raw_body, headers, started, "chatcmpl-", body)

    async def _generate(self, req: CompletionRequest | ChatCompletionRequest, served: ServedModel,
                        gen: GenerationRequest, prompt_tokens: int, raw_body: Any, headers: Mapping[str, str],
                        started: float, id_prefix: str, body: Callable[[str, str, str, UsageOut], Any]) -> Served | Streamed:
        """The paid path both APIs share: authorize, generate (streamed or whole), settle, answer."""
        charge = await self.authorizer.authorize(headers, served.card.id, served.model_id, prompt_tokens,
                                                 gen.params.max_tokens)
        response_id = id_prefix + secrets.token_hex(12)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chat = isinstance(req, ChatCompletionRequest)
            return self._streamed(served, gen, charge, raw_body, response_id, started, include_usage, chat=chat)
        text, finish, usage = await self._complete(served, gen, charge)
        receipt, total = self._settle(charge, served, usage, raw_body, response_id, started)
        return Served(body(response_id, text, finish, self._usage(usage, receipt, total)), self._headers(receipt, total))

    async def _complete(self, served: ServedModel, gen: GenerationRequest, charge: Charge) -> tuple[str, str, Usage]:
        engine_started = time.perf_counter()
        try:
            completion = await served.engine.complete(gen)
        except BaseException as exc:
            self.authorizer.release(charge)
            if isinstance(exc, Exception):
                raise _engine_error(exc) from exc
            raise
        self.metrics.engine_latency.labels(model=served.card.id).observe(time.perf_counter() - engine_started)
        text, finish = completion.text, completion.finish_reason
        cut = self.filter.find_in_output(text, final=True)
        if cut is not None:
            text, finish = text[:cut], "content_filter"
            self.metrics.errors.labels(type="content_filter_output").inc()
        return text, finish, completion.usage

    def _streamed(self, served: ServedModel, gen: GenerationRequest, charge: Charge, raw_body: Any,
                  response_id: str, started: float, include_usage: bool, chat: bool) -> Streamed:
        done = _Done()
        events = self._stream(served, gen, charge, raw_body, response_id, started, include_usage, chat, done)
        # NOTE: a client that leaves before the first chunk leaves the generator unstarted, and an
        # unstarted generator never runs its `finally`: release its reservation when it is collected.
        weakref.finalize(events, self._release_unsettled, charge, done)
        return Streamed(events, {})

    def _release_unsettled(self, charge: Charge, done: "_Done") -> None:
        if not done.value:
            done.value = True
            self.authorizer.release(charge)

    async def _stream(self, served: ServedModel, gen: GenerationRequest, charge: Charge, raw_body: Any,
                      response_id: str, started: float, include_usage: bool, chat: bool,
                      done: "_Done") -> AsyncIterator[bytes]:
        model = served.card.id
        created = int(time.time())

        def chunk(text: str | None, finish: str | None = None, first: bool = False) -> BaseModel:
            if chat:
                delta = ChatDelta(role="assistant" if first else None, content=text)
                return ChatCompletionChunk(id=response_id, created=created, model=model,
                                           choices=[ChatChunkChoice(delta=delta, finish_reason=finish)])
            return CompletionChunk(id=response_id, created=created, model=model,
                                   choices=[CompletionChunkChoice(text=text or "", finish_reason=finish)])

        guard = OutputGuard(self.filter)
        usage: Usage | None = None
        finish: str | None = None
        first_token = False
        stream = served.engine.stream(gen)
        try:
            if chat:
                yield _sse(chunk("", first=True))
            try:
                async for delta in stream:
                    if delta.text and not first_token:
                        first_token = True
                        self.metrics.ttft.labels(model=model).observe(time.perf_counter() - started)
                    safe = guard.feed(delta.text)
                    if safe:
                        yield _sse(chunk(safe))
                    if guard.blocked:
                        finish = "content_filter"
                        break
                    if delta.finish_reason is not None:
                        finish, usage = delta.finish_reason, delta.usage
                        break
            except Exception as exc:
                if not first_token:
                    self._release_unsettled(charge, done)
                err = _engine_error(exc)
                self.metrics.errors.labels(type=err.code).inc()
                log.warning("stream of %s failed: %s", response_id, exc)
                yield _sse(_json_dumps(err.body()))
                return
            rest = guard.finish()
            if guard.blocked:
                finish = "content_filter"
            if rest:
                yield _sse(chunk(rest))
            if usage is None:
                usage = self._count_usage(served, gen, guard.text)
            done.value = True
            receipt, total = self._settle(charge, served, usage, raw_body, response_id, started)
            last = chunk(None if chat else "", finish or "stop")
            usage_out = self._usage(usage, receipt, total)
            if include_usage:
                yield _sse(last)
                final = (ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage_out)
                         if chat else
                         CompletionChunk(id=response_id, created=created, model=model, choices=[], usage=usage_out))
                yield _sse(final)
            else:
                # NOTE: without include_usage a client gets no usage chunk, so the receipt and the
                # running total ride as extra fields of the last chunk.
                last.nodeai_receipt = usage_out.nodeai_receipt  # type: ignore[attr-defined]
                last.nodeai_charged_total = usage_out.nodeai_charged_total  # type: ignore[attr-defined]
                yield _sse(last)
            yield b"data: [DONE]\n\n"
        finally:
            with anyio.CancelScope(shield=True):
                if hasattr(stream, "aclose"):
                    await stream.aclose()  # NOTE: stops the engine generating for a client that left
            if not done.value:
                done.value = True
                # NOTE: the client went away mid-stream: charge what the engine generated for it.
                try:
                    partial = self._count_usage(served, gen, guard.text)
                    self._settle(charge, served, partial, raw_body, response_id, started)
                except Exception:
                    log.exception("could not settle the interrupted stream %s", response_id)
                    self.authorizer.release(charge)

    def _count_usage(self, served: ServedModel, gen: GenerationRequest, text: str) -> Usage:
        prompt_tokens = served.engine.count_tokens(served.card.id, gen)
        return Usage(prompt_tokens, served.engine.count_tokens(served.card.id, text) if text else 0)

    # -- embeddings -----------------------------------------------------------------------------
    async def embeddings(self, req: EmbeddingRequest, raw_body: Any, headers: Mapping[str, str]) -> Served:
        started = time.perf_counter()
        served = self._model(req.model, "embed")
        inputs = [req.input] if isinstance(req.input, str) else req.input
        if not inputs or not all(isinstance(text, str) for text in inputs):
            raise BadRequest("input must be a non-empty string or list of strings (token id arrays are not "
                             "supported: send text)", param="input")
        texts: list[str] = list(inputs)  # type: ignore[arg-type]
        if any(not text for text in texts):
            raise BadRequest("input must not contain empty strings", param="input")
        if len(texts) > self.limits.max_embedding_inputs:
            raise BadRequest(f"{len(texts)} inputs is more than this provider's limit of "
                             f"{self.limits.max_embedding_inputs} per request: split them", param="input")
        if req.dimensions is not None:
            raise BadRequest(f"dimensions is not supported by {req.model!r} (it returns its native size): leave it out",
                             param="dimensions")
        self._check_input(texts, "input")
        try:
            counts = [served.engine.count_tokens(served.card.id, text) for text in texts]
        except Exception as exc:
            raise _engine_error(exc) from exc
        for index, count in enumerate(counts):
            if count > served.card.context_length:
                raise BadRequest(f"input {index} has {count} tokens, more than {req.model!r} takes "
                                 f"({served.card.context_length}): shorten or split it", param="input",
                                 code="context_length_exceeded")
        charge = await self.authorizer.authorize(headers, served.card.id, served.model_id, sum(counts), 0)
        engine_started = time.perf_counter()
        try:
            result = await served.engine.embed(served.card.id, texts)
        except BaseException as exc:
            self.authorizer.release(charge)
            if isinstance(exc, Exception):
                raise _engine_error(exc) from exc
            raise
        self.metrics.engine_latency.labels(model=served.card.id).observe(time.perf_counter() - engine_started)
        usage = Usage(result.prompt_tokens, 0)
        response_id = "emb-" + secrets.token_hex(12)
        receipt, total = self._settle(charge, served, usage, raw_body, response_id, started)
        # NOTE: model_construct: the engine's vectors need no validation, and validating 384 floats
        # per input costs more than the rest of the response.
        if req.encoding_format == "base64":
            data = [EmbeddingData.model_construct(index=i, object="embedding",
                                                  embedding=base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode())
                    for i, v in enumerate(result.vectors)]
        else:
            data = [EmbeddingData.model_construct(index=i, object="embedding", embedding=v)
                    for i, v in enumerate(result.vectors)]
        # NOTE: OpenAI's embedding response has no id; receipts hash one, so it rides as an extra field.
        body = EmbeddingResponse(id=response_id, data=data, model=served.card.id,
                                 usage=self._usage(usage, receipt, total))
        return Served(body, self._headers(receipt, total))


class _Done:
    """Whether a stream's reservation was settled or released (exactly one of them happens)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


def _json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
