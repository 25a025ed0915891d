"""vLLM as an engine: a supervised ``vllm.entrypoints.openai.api_server`` child process.

vLLM lives in its own virtual environment (``.venv-vllm``, made by
``scripts/setup-vllm.sh``): it pins its own torch, transformers and fastapi.
This module never imports it; it starts ``python -m
vllm.entrypoints.openai.api_server`` with that environment's interpreter, in a
process group of its own on 127.0.0.1 and a free port, and talks to its
OpenAI-compatible API with httpx.

Supervision (a thread, so it works whatever event loop, or none, the caller runs):

* **Readiness is a real request.** vLLM's ``/health`` answers 200 before the
  first generation can crash (kernels are picked and memory is touched on the
  first batch), so the engine is ready only once a 1-token completion came back.
  If the process exits while starting, `start` raises at once with the end of
  its log, instead of waiting out the start-up timeout.
* **Liveness**: every second the process is checked for having exited; every
  ``health_interval_s`` a 1-token completion probes it (skipped when a real
  request succeeded within that interval). A crash, or ``failures_before_restart``
  failed probes in a row (a hung server), kills the whole process group and
  starts vLLM again on the same port, with exponential backoff between failed
  attempts; ``restarts`` counts them. Requests made meanwhile fail fast with
  `EngineUnavailable` (the gateway answers 503) rather than queueing.
* **Shutdown**: SIGTERM to the process group, SIGKILL after a grace period,
  until no process of the group is left (vLLM's engine-core and worker
  processes are in the same group, and outlive a killed API server otherwise).

Errors vLLM returns become the serving errors of `nodeai.errors`:
unknown model -> `ModelNotServed`, prompt longer than the context ->
`ContextLengthExceeded`, other 400s -> `InvalidGenerationParams` (naming vLLM's
``param``), anything else -> `VllmRequestFailed` or `EngineUnavailable`.

The gateway can also pass raw OpenAI requests through (`forward`,
`forward_stream`) and merge vLLM's Prometheus metrics into its own
(`metrics_text`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Mapping

import httpx

from nodeai.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidGenerationParams,
    ModelFilesMissing,
    ModelNotServed,
    ServingError,
)

from .base import (
    Completion,
    Delta,
    Engine,
    EngineHealth,
    FinishReason,
    GenerationRequest,
    ModelCard,
    Usage,
)
from .hf_checkpoint import MIN_HEAD_SIZE, REPO_ROOT, checkpoint_head_size, default_vllm_python
from .orphan_guard import guarded_popen

__all__ = [
    "FORWARDED_PATHS",
    "VllmConfig",
    "VllmEngine",
    "VllmModelUnsupported",
    "VllmRequestFailed",
    "VllmStartupError",
    "completion_from_openai",
    "openai_request",
    "process_group_members",
    "select_metric_families",
    "tokenize_request",
]

log = logging.getLogger(__name__)

State = Literal["stopped", "starting", "ready", "restarting", "failed", "closed"]

FORWARDED_PATHS = ("/v1/", "/tokenize", "/detokenize")
"""Path prefixes `forward` passes to vLLM; its admin routes (scaling, aborts, profiling) stay private."""


class VllmStartupError(EngineUnavailable):
    """vLLM exited while starting, or did not answer a real request in time."""

    def __init__(self, reason: str, log_tail: str = ""):
        self.reason = reason
        self.log_tail = log_tail
        tail = f"\n--- end of the vLLM log ---\n{log_tail}" if log_tail else ""
        super().__init__("vllm", f"{reason}{tail}")


class VllmModelUnsupported(ServingError, ValueError):
    def __init__(self, model: Path, problem: str):
        self.model = model
        super().__init__(f"vLLM cannot serve {model}: {problem}")


class VllmRequestFailed(ServingError):
    """vLLM answered with an error that no more specific serving error describes."""

    def __init__(self, status: int, type_: str, message: str):
        self.status, self.type, self.message = status, type_, message
        super().__init__(f"vLLM answered HTTP {status} ({type_}): {message}")


@dataclass(frozen=True, slots=True)
class VllmConfig:
    """How vLLM is started and supervised. Every field has a working default on this machine."""

    model: Path | None = None
    """A Hugging Face checkpoint folder (config.json, safetensors, tokenizer) or a .gguf file;
    None: SmolLM2-135M-Instruct converted from the packaged GGUF (made on first start, then cached)."""
    served_model_name: str = "smollm2-135m-instruct"
    """The model id clients ask for (the same id as the llama.cpp engine's, so engines are interchangeable)."""
    python: Path | None = None
    """Interpreter of vLLM's environment; None: ``NODEAI_VLLM_PYTHON`` or ``.venv-vllm/bin/python``."""
    host: str = "127.0.0.1"
    """vLLM has no authentication of its own: keep it on loopback, behind the gateway."""
    port: int | None = None
    """None: a free port, chosen at start and kept across restarts."""
    max_model_len: int = 2048
    """Context length (prompt + completion tokens); also bounds the KV cache per sequence."""
    dtype: str = "float32"
    """float32 here: this CPU has AVX2 but no AVX512-BF16, and vLLM's bfloat16 path falls back to slow,
    lossy kernels on it (SmolLM2 stopped answering "Paris")."""
    enforce_eager: bool = True
    """Skip torch.compile: it makes start-up take 10 minutes on 2 busy cores, for little gain on a 135M model."""
    kv_cache_gib: int = 1
    """``VLLM_CPU_KVCACHE_SPACE`` (whole GiB, as vLLM parses it): RAM for the KV cache (1 GiB = 23k tokens
    of SmolLM2 in float32)."""
    extra_args: tuple[str, ...] = ()
    """More ``api_server`` flags, passed as they are (e.g. ``("--max-num-seqs", "16")``)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for vLLM (e.g. ``VLLM_CPU_OMP_THREADS_BIND``)."""
    cache_dir: Path | None = None
    """vLLM's cache (``VLLM_CACHE_ROOT``) and the logs; None: ``.cache/vllm`` in the repository."""
    log_path: Path | None = None
    """vLLM's stdout and stderr, appended across restarts; None: ``<cache_dir>/logs/vllm-<port>.log``."""
    startup_timeout_s: float = 900.0
    """Longest wait for the first real answer (about 2-4 minutes here, more while the CPU is busy)."""
    request_timeout_s: float = 600.0
    """Longest wait for one generation request (between two streamed chunks, when streaming)."""
    probe_timeout_s: float = 60.0
    """Longest wait for one 1-token health probe; a busy server is slow, not hung, so be generous."""
    health_interval_s: float = 15.0
    """Seconds between health probes (none while real requests succeed)."""
    failures_before_restart: int = 3
    """Failed probes in a row that count as hung."""
    restart_backoff_s: float = 1.0
    """First pause before a restart; doubles after each failed attempt."""
    restart_backoff_max_s: float = 60.0
    max_restarts: int | None = None
    """Give up (state ``failed``) after this many restarts; None: never."""
    term_grace_s: float = 15.0
    """Seconds between SIGTERM and SIGKILL on shutdown."""


# --- pure mapping between the engine interface and vLLM's OpenAI API ------------------------------


def openai_request(request: GenerationRequest, served_model_name: str, *, stream: bool = False) -> tuple[str, dict]:
    """The vLLM path and JSON body for a generation request."""
    p = request.params
    body: dict[str, Any] = {
        "model": served_model_name,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
    }
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    if p.json_schema is not None:
        # NOTE: vLLM's own parameter, the same for both endpoints; `{}` means any JSON object.
        body["structured_outputs"] = {"json": p.json_schema or {"type": "object"}}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.messages is not None:
        body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
        return "/v1/chat/completions", body
    body["prompt"] = request.prompt
    return "/v1/completions", body


def tokenize_request(request: GenerationRequest | str, served_model_name: str) -> dict:
    """The ``/tokenize`` body that counts prompt tokens the way the generation endpoint will.

    A completion prompt gets special tokens added (as ``/v1/completions`` does),
    chat messages get the chat template with the generation prompt (as
    ``/v1/chat/completions`` does), and a bare string is counted as plain text.
    """
    if isinstance(request, str):
        return {"model": served_model_name, "prompt": request, "add_special_tokens": False}
    if request.messages is not None:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return {"model": served_model_name, "messages": messages, "add_generation_prompt": True}
    return {"model": served_model_name, "prompt": request.prompt, "add_special_tokens": True}


def _finish_reason(value: Any) -> FinishReason:
    if value == "length":
        return "length"
    if value in ("stop", "tool_calls", None):
        return "stop"
    if value == "abort":
        raise EngineUnavailable("vllm", "vLLM aborted the request (it is shutting down or restarting): retry")
    raise VllmRequestFailed(500, "generation_error", f"generation ended with finish_reason {value!r}")


def _usage(body: Mapping[str, Any]) -> Usage:
    usage = body.get("usage") or {}
    try:
        return Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        raise VllmRequestFailed(502, "bad_response", f"no token usage in vLLM's answer: {str(body)[:300]}") from None


def completion_from_openai(body: Mapping[str, Any]) -> Completion:
    """A `Completion` from vLLM's (non-streamed) completion or chat completion answer."""
    choices = body.get("choices") or []
    if not choices:
        raise VllmRequestFailed(502, "bad_response", f"no choices in vLLM's answer: {str(body)[:300]}")
    choice = choices[0]
    if "message" in choice:
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return Completion(text=text, finish_reason=_finish_reason(choice.get("finish_reason")), usage=_usage(body))


def _error_fields(body: bytes | str | Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(message, type, param) of an OpenAI-shaped error body; the raw text when it is not one."""
    data: Any = body
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except ValueError:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            return text.strip()[:500] or "(empty body)", "error", None
    if isinstance(data, Mapping):
        error = data.get("error", data)
        if isinstance(error, Mapping):
            return str(error.get("message") or error), str(error.get("type") or "error"), error.get("param")
    return str(data)[:500], "error", None


_CONTEXT = re.compile(r"maximum context length is (\d+) tokens")
_PROMPT = re.compile(r"(\d+) input tokens")


def select_metric_families(text: str, prefixes: tuple[str, ...] = ("vllm:",)) -> str:
    """Only the metric families whose names start with one of ``prefixes``.

    vLLM's ``/metrics`` also carries the usual ``process_*`` and ``python_gc_*``
    families; the gateway exports its own, and one exposition must not hold a
    family twice.
    """
    kept = []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ", 3)[2] if line.count(" ") >= 2 else ""
        elif line.startswith("#") or not line.strip():
            continue
        else:
            name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.startswith(prefixes):
            kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


# --- processes --------------------------------------------------------------------------------------


def process_group_members(pgid: int, parent: int | None = None) -> list[int]:
    """Live (non-zombie) processes of a process group (only the children of ``parent`` if given), read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # NOTE: it exited while we were looking
        # NOTE: the command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            if parent is None or int(fields[1]) == parent:
                members.append(int(entry.name))
    return members


def _kill_group(pgid: int, proc: subprocess.Popen[bytes] | None, grace_s: float) -> None:
    """SIGTERM the group, SIGKILL what is left after ``grace_s``, until no member lives."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(pgid, sig)
            if sig == signal.SIGTERM:
                os.killpg(pgid, signal.SIGCONT)  # NOTE: a stopped (hung) process acts on SIGTERM only once continued
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # NOTE: reap our own child, or it stays a member as a zombie
            if not process_group_members(pgid):
                return
            time.sleep(0.2)
    log.error("process group %d still has members after SIGKILL: %s", pgid, process_group_members(pgid))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _check_model(model: Path) -> None:
    """Fail in milliseconds on a model vLLM would only reject after a minute of imports."""
    if model.is_file() and model.suffix == ".gguf":
        return
    if not model.is_dir():
        raise ModelFilesMissing(
            f"model {model}",
            "give a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer) or a .gguf file; "
            "for the demo model leave `model` unset (`make setup-vllm` converts it)",
        )
    config_file = model / "config.json"
    if not config_file.is_file():
        raise ModelFilesMissing(f"config.json in {model}", "the folder is not a Hugging Face checkpoint")
    if not any(model.glob("*.safetensors")) and not any(model.glob("*.bin")):
        raise ModelFilesMissing(f"weights (*.safetensors) in {model}", "the checkpoint has no weights")
    try:
        config = json.loads(config_file.read_text())
        head = checkpoint_head_size(config.get("text_config", config))
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise VllmModelUnsupported(model, f"config.json is not readable ({exc!r})") from None
    if head < MIN_HEAD_SIZE:
        raise VllmModelUnsupported(
            model, f"its attention head size is {head}; vLLM on the CPU needs >= {MIN_HEAD_SIZE}"
        )


# --- the engine ---------------------------------------------------------------------------------------


class VllmEngine(Engine):
    """Text generation by a vLLM server this object starts, supervises and stops."""

    name = "vllm"

    def __init__(self, config: VllmConfig | None = None) -> None:
        self.config = config or VllmConfig()
        self.restarts = 0
        """Restart attempts since `start` (crashes, hangs, and failed attempts at coming back)."""
        self._state: State = "stopped"
        self._last_error = ""
        self._lock = threading.RLock()
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._suspect = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = self.config.port
        self._model: Path | None = None
        self._log_path: Path | None = None
        self._supervisor: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._guard_fd: int | None = None
        """Write end of the orphan guard's pipe (see orphan_guard.py)."""
        self._last_ok = 0.0
        self._sync = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._token_cache: OrderedDict[str, int] = OrderedDict()

    # -- introspection

    @property
    def state(self) -> State:
        return self._state

    @property
    def pid(self) -> int | None:
        """PID of the process group's leader: the orphan guard that runs the API server."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def server_pid(self) -> int | None:
        """PID of the vLLM API server itself (the guard's child), while it runs."""
        guard = self.pid
        children = process_group_members(guard, parent=guard) if guard is not None else []
        return children[0] if children else None

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise EngineUnavailable(self.name, "not started: call start() first")
        return f"http://{self.config.host}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.config.served_model_name, kind="generate", context_length=self.config.max_model_len)]

    async def health(self) -> EngineHealth:
        state, proc = self._state, self._proc
        if state == "ready" and proc is not None:
            code = proc.poll()
            if code is None:
                return EngineHealth(True, f"vLLM (process group {proc.pid}) at {self.base_url}, {self.restarts} restarts")
            # NOTE: between the crash and the supervisor's next look (up to a second)
            return EngineHealth(False, f"vLLM exited with {_exit_text(code)}; restarting it ({self.restarts} restarts)")
        detail = f"vLLM is {state}" + (f": {self._last_error}" if self._last_error else "")
        return EngineHealth(False, f"{detail} ({self.restarts} restarts)")

    # -- life cycle

    async def start(self) -> None:
        """Start vLLM and wait until it answered a real request (minutes). Idempotent."""
        await asyncio.to_thread(self._start_blocking)

    async def close(self) -> None:
        """Stop supervising and stop vLLM with its whole process group. Idempotent."""
        await asyncio.to_thread(self._close_blocking)
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _start_blocking(self) -> None:
        with self._start_lock:
            if self._state == "closed":
                raise EngineUnavailable(self.name, "this engine was closed: make a new VllmEngine")
            if self._state in ("ready", "restarting"):
                return
            python = Path(self.config.python or default_vllm_python())
            if not os.access(python, os.X_OK):
                raise ModelFilesMissing(
                    f"the vLLM interpreter {python}",
                    "run `make setup-vllm` (it creates .venv-vllm with vllm-cpu), or set VllmConfig.python",
                )
            model = self.config.model
            if model is None:
                from .hf_checkpoint import ensure_smollm2_checkpoint

                model = ensure_smollm2_checkpoint(python)
            self._model = Path(model).resolve()
            _check_model(self._model)
            cache = Path(self.config.cache_dir or REPO_ROOT / ".cache" / "vllm")
            (cache / "logs").mkdir(parents=True, exist_ok=True)
            if self._port is None:
                self._port = _free_port(self.config.host)
            self._log_path = Path(self.config.log_path or cache / "logs" / f"vllm-{self._port}.log")
            self._stop.clear()
            self._state = "starting"
            try:
                self._launch(python, cache)
                self._wait_ready(time.monotonic() + self.config.startup_timeout_s)
            except BaseException:
                self._terminate()
                self._state = "stopped"
                raise
            self._state = "ready"
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"vllm-supervisor-{self._port}", daemon=True
            )
            self._supervisor.start()

    def _command(self, python: Path) -> list[str]:
        c = self.config
        # NOTE: -P: nothing of the working directory on sys.path, so no folder of
        # ours can shadow a package of vLLM's environment.
        command = [
            str(python), "-P", "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self._model), "--served-model-name", c.served_model_name,
            "--host", c.host, "--port", str(self._port),
            "--max-model-len", str(c.max_model_len), "--dtype", c.dtype,
            "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning",
        ]  # fmt: skip
        if c.enforce_eager:
            command.append("--enforce-eager")
        return command + list(c.extra_args)

    def _launch(self, python: Path, cache: Path) -> None:
        env = {
            **os.environ,
            # NOTE: nothing may be downloaded at run time; the model is local.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(int(self.config.kv_cache_gib)),
            "VLLM_CACHE_ROOT": str(cache),
            **self.config.env,
        }
        for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
            env.pop(name, None)  # NOTE: they point at the main environment, not vLLM's
        assert self._log_path is not None
        with self._lock:
            if self._stop.is_set():
                raise EngineUnavailable(self.name, "closed while starting")
            with self._log_path.open("ab") as logf:
                logf.write(f"\n==== nodeai: starting vLLM at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
                logf.flush()
                # NOTE: a new session = a new process group holding the guard, the API
                # server, its engine core and workers, so one killpg stops them all; the
                # guard stops the group by itself if this process dies without close().
                if self._guard_fd is not None:  # NOTE: the last server's guard, already stopped
                    os.close(self._guard_fd)
                self._proc, self._guard_fd = guarded_popen(
                    python, self._command(python), stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=cache,
                )  # fmt: skip
            # NOTE: if this object is dropped or the interpreter exits without close(),
            # the 4 GB server must not outlive it.
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _kill_group, self._proc.pid, None, 5.0)
        log.info("started vLLM in process group %d on port %d (log %s)", self._proc.pid, self._port, self._log_path)

    def _probe(self, timeout: float) -> None:
        """One real 1-token completion; raises on any failure."""
        response = self._sync.post(
            self.base_url + "/v1/completions",
            json={"model": self.config.served_model_name, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )
        if response.status_code != 200:
            message, type_, _ = _error_fields(response.content)
            raise VllmRequestFailed(response.status_code, type_, message)
        completion_from_openai(response.json())

    def _wait_ready(self, deadline: float) -> None:
        """Until a real completion succeeds; raise as soon as the process exits or time runs out."""
        proc = self._proc
        assert proc is not None and self._log_path is not None
        last = ""
        while True:
            if self._stop.is_set():
                raise EngineUnavailable(self.name, "closed while starting")
            code = proc.poll()
            if code is not None:
                raise VllmStartupError(f"vLLM exited with {_exit_text(code)} while starting", _log_tail(self._log_path))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VllmStartupError(
                    f"vLLM did not answer a completion within {self.config.startup_timeout_s:g} s "
                    f"(last attempt: {last or 'no answer'}); raise startup_timeout_s on a busy machine",
                    _log_tail(self._log_path),
                )
            try:
                # NOTE: /health first, cheaply, while the server is still loading;
                # it says nothing about the first batch, so a completion must follow.
                if self._sync.get(self.base_url + "/health", timeout=2.0).status_code == 200:
                    self._probe(timeout=max(1.0, min(self.config.probe_timeout_s, remaining)))
                    self._last_ok = time.monotonic()
                    return
                last = "/health not OK yet"
            except (httpx.HTTPError, ServingError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            self._stop.wait(1.0)

    def _supervise(self) -> None:
        failures = 0
        next_probe = time.monotonic() + self.config.health_interval_s
        while not self._stop.wait(min(1.0, self.config.health_interval_s)):
            proc = self._proc
            if proc is None or self._state == "failed":
                return  # NOTE: gave up; a new start() starts a new supervisor
            code = proc.poll()
            if code is not None:
                self._restart(f"vLLM exited with {_exit_text(code)}")
                failures, next_probe = 0, time.monotonic() + self.config.health_interval_s
                continue
            now = time.monotonic()
            suspect = self._suspect.is_set()
            if not suspect and now < next_probe:
                continue
            self._suspect.clear()
            next_probe = now + self.config.health_interval_s
            if not suspect and now - self._last_ok < self.config.health_interval_s:
                failures = 0  # NOTE: real requests succeeded lately: no need to add load
                continue
            try:
                self._probe(timeout=self.config.probe_timeout_s)
                self._last_ok, failures = time.monotonic(), 0
            except (httpx.HTTPError, ServingError, ValueError) as exc:
                failures += 1
                self._last_error = f"health probe failed ({type(exc).__name__}: {exc})"
                log.warning("vLLM %s (%d/%d)", self._last_error, failures, self.config.failures_before_restart)
                if failures >= self.config.failures_before_restart and not self._stop.is_set():
                    self._restart(
                        f"vLLM hung: {failures} health probes failed, the last with {type(exc).__name__}: {exc}"
                    )
                    failures, next_probe = 0, time.monotonic() + self.config.health_interval_s

    def _restart(self, reason: str) -> None:
        """Kill the group and start vLLM again until it answers, with backoff (supervisor thread)."""
        c = self.config
        self._state, self._last_error = "restarting", reason
        log.warning("restarting vLLM: %s", reason)
        self._terminate()
        python = Path(c.python or default_vllm_python())
        cache = Path(c.cache_dir or REPO_ROOT / ".cache" / "vllm")
        attempt = 0
        while not self._stop.is_set():
            if c.max_restarts is not None and self.restarts >= c.max_restarts:
                self._state = "failed"
                self._last_error = f"gave up after {self.restarts} restarts; last: {reason}"
                log.error("vLLM %s", self._last_error)
                return
            if self._stop.wait(min(c.restart_backoff_max_s, c.restart_backoff_s * 2**attempt)):
                return
            self.restarts += 1
            try:
                self._launch(python, cache)
                self._wait_ready(time.monotonic() + c.startup_timeout_s)
            except (ServingError, OSError) as exc:
                attempt += 1
                reason = f"restart {self.restarts} failed: {exc}"
                self._last_error = reason
                log.error("vLLM %s", reason)
                self._terminate()
                if c.port is None:
                    self._port = _free_port(c.host)  # NOTE: maybe someone took our port meanwhile
                continue
            self._state = "ready"
            log.warning("vLLM is back (pid %d, restart %d)", self._proc.pid if self._proc else -1, self.restarts)
            return

    def _terminate(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        _kill_group(proc.pid, proc, self.config.term_grace_s)
        proc.poll()
        with self._lock:
            # NOTE: under the lock: close() and the supervisor's restart may both get here,
            # and a descriptor closed twice may by then belong to someone else's socket.
            guard_fd = self._guard_fd if self._proc is proc else None
            if guard_fd is not None:
                self._guard_fd = None
        if guard_fd is not None:
            os.close(guard_fd)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def _close_blocking(self) -> None:
        with self._lock:
            if self._state == "closed":
                return
            self._stop.set()  # NOTE: under the lock: no launch can start after this
        self._terminate()  # NOTE: first, so an in-flight probe fails at once instead of timing out
        if self._supervisor is not None:
            self._supervisor.join(timeout=self.config.probe_timeout_s + self.config.term_grace_s + 30)
        self._terminate()
        self._state = "closed"
        self._sync.close()

    # -- requests

    def _ready_url(self, path: str) -> str:
        if self._state != "ready":
            reasons = {
                "stopped": "not started: call start() first",
                "starting": "still starting",
                "restarting": f"restarting after: {self._last_error}; retry in a few seconds",
                "failed": self._last_error,
                "closed": "closed",
            }
            raise EngineUnavailable(self.name, reasons.get(self._state, self._state))
        return self.base_url + path

    def _check_model_name(self, model: str) -> None:
        if model != self.config.served_model_name:
            raise ModelNotServed(model, [self.config.served_model_name])

    def _client(self) -> httpx.AsyncClient:
        # NOTE: an httpx.AsyncClient belongs to the event loop it first ran in; keep one per loop.
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.request_timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
            self._aclients[loop] = client
        return client

    def _unavailable(self, exc: httpx.HTTPError, url: str) -> EngineUnavailable:
        self._suspect.set()  # NOTE: let the supervisor look now, not at the next interval
        if isinstance(exc, httpx.TimeoutException):
            return EngineUnavailable(self.name, f"no answer from vLLM at {url} in time ({type(exc).__name__})")
        return EngineUnavailable(
            self.name, f"lost the connection to vLLM at {url} ({type(exc).__name__}: {exc}); retry shortly"
        )

    def _error(
        self, status: int, body: bytes | str | Mapping[str, Any], model: str, max_tokens: int = 0
    ) -> ServingError:
        message, type_, param = _error_fields(body)
        if status == 404 and param == "model":
            return ModelNotServed(model, [self.config.served_model_name])
        if status == 400:
            context, prompt = _CONTEXT.search(message), _PROMPT.search(message)
            if context and prompt:
                return ContextLengthExceeded(model, int(prompt.group(1)), max_tokens, int(context.group(1)))
            return InvalidGenerationParams(str(param or "request"), message)
        if status >= 500:
            return EngineUnavailable(self.name, f"vLLM failed the request (HTTP {status}, {type_}): {message}")
        return VllmRequestFailed(status, type_, message)

    async def complete(self, request: GenerationRequest) -> Completion:
        self._check_model_name(request.model)
        path, body = openai_request(request, self.config.served_model_name)
        url = self._ready_url(path)
        try:
            response = await self._client().post(url, json=body)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc
        if response.status_code != 200:
            raise self._error(response.status_code, response.content, request.model, request.params.max_tokens)
        completion = completion_from_openai(response.json())
        self._last_ok = time.monotonic()
        return completion

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self._check_model_name(request.model)
        path, body = openai_request(request, self.config.served_model_name, stream=True)
        url = self._ready_url(path)
        chat = request.messages is not None
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            async with self._client().stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    body_bytes = await response.aread()
                    raise self._error(response.status_code, body_bytes, request.model, request.params.max_tokens)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise self._error(int((chunk["error"] or {}).get("code") or 500), chunk, request.model)
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if text:
                            yield Delta(text)
                        if choice.get("finish_reason") is not None:
                            finish = _finish_reason(choice["finish_reason"])
                    if chunk.get("usage"):
                        usage = _usage(chunk)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc
        if finish is None or usage is None:
            raise EngineUnavailable(self.name, "vLLM ended the stream without a finish reason and usage: retry")
        self._last_ok = time.monotonic()
        yield Delta("", finish_reason=finish, usage=usage)

    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        """Tokens as vLLM counts them, from its ``/tokenize`` (chat template applied for chat).

        # NOTE: synchronous, as the interface wants: one loopback round trip
        # (about a millisecond, more under load) that blocks the caller's event
        # loop; results are cached, since the gateway counts the same prompt
        # for its limits and for its price bound. `count_tokens_async` does not block.
        """
        self._check_model_name(model)
        body = tokenize_request(request, self.config.served_model_name)
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            if key in self._token_cache:
                self._token_cache.move_to_end(key)
                return self._token_cache[key]
        url = self._ready_url("/tokenize")
        try:
            response = self._sync.post(url, json=body)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc
        return self._tokenized(key, response.status_code, response.content, model)

    async def count_tokens_async(self, model: str, request: GenerationRequest | str) -> int:
        """`count_tokens` without blocking the event loop."""
        self._check_model_name(model)
        body = tokenize_request(request, self.config.served_model_name)
        key = json.dumps(body, sort_keys=True)
        with self._lock:
            if key in self._token_cache:
                return self._token_cache[key]
        url = self._ready_url("/tokenize")
        try:
            response = await self._client().post(url, json=body)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc
        return self._tokenized(key, response.status_code, response.content, model)

    def _tokenized(self, key: str, status: int, content: bytes, model: str) -> int:
        if status != 200:
            raise self._error(status, content, model)
        count = int(json.loads(content)["count"])
        with self._lock:
            self._token_cache[key] = count
            if len(self._token_cache) > 4096:
                self._token_cache.popitem(last=False)
        return count

    # -- pass-through for the gateway

    def _forward_url(self, path: str) -> str:
        if not path.startswith(FORWARDED_PATHS) or ".." in path or "://" in path:
            raise InvalidGenerationParams(
                "path", f"{path!r} is not forwarded to vLLM: only paths under {', '.join(FORWARDED_PATHS)} are"
            )
        return self._ready_url(path)

    @staticmethod
    def _forward_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
        # NOTE: hop-by-hop headers and the client's credentials stay with the gateway.
        dropped = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "authorization",
                   "upgrade", "te", "trailer", "proxy-authorization"}  # fmt: skip
        return {k: v for k, v in (headers or {}).items() if k.lower() not in dropped}

    async def forward(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a raw OpenAI request to vLLM and return its whole answer (any status) unchanged."""
        url = self._forward_url(path)
        try:
            response = await self._client().request(
                method, url, json=json_body, content=content, headers=self._forward_headers(headers)
            )
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc
        if response.status_code < 500:
            self._last_ok = time.monotonic()
        return response

    @asynccontextmanager
    async def forward_stream(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Like `forward`, for streamed answers: yields vLLM's response with its body unread
        (iterate ``response.aiter_raw()`` to relay the SSE bytes as they come)."""
        url = self._forward_url(path)
        try:
            async with self._client().stream(
                method, url, json=json_body, content=content, headers=self._forward_headers(headers)
            ) as response:
                yield response
        except httpx.HTTPError as exc:
            raise self._unavailable(exc, url) from exc

    async def metrics_text(self) -> str:
        """Prometheus text: the supervisor's own gauges plus vLLM's ``vllm:*`` families.

        When vLLM is down only the supervisor's part comes back, so a scrape
        still shows ``nodeai_vllm_up 0`` and the restart count."""
        up = 1 if self._state == "ready" and self.pid is not None else 0
        own = (
            "# HELP nodeai_vllm_up 1 while the supervised vLLM server is ready to serve.\n"
            "# TYPE nodeai_vllm_up gauge\n"
            f"nodeai_vllm_up {up}\n"
            "# HELP nodeai_vllm_restarts_total Times the supervisor restarted vLLM (crashes, hangs, failed attempts).\n"
            "# TYPE nodeai_vllm_restarts_total counter\n"
            f"nodeai_vllm_restarts_total {self.restarts}\n"
        )
        if not up:
            return own
        try:
            response = await self._client().get(self.base_url + "/metrics", timeout=10.0)
        except httpx.HTTPError as exc:
            log.warning("reading vLLM's /metrics failed: %r", exc)
            return own
        if response.status_code != 200:
            return own
        return own + select_metric_families(response.text)


def _exit_text(code: int) -> str:
    # NOTE: the orphan guard reports a server killed by signal N as 128 + N, as a shell does.
    signum = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
    if signum is not None:
        try:
            return f"signal {signal.Signals(signum).name}"
        except ValueError:
            return f"signal {signum}"
    return f"exit code {code}"
