"""VllmEngine without a vLLM server: the fast refusals and the pure request/answer mapping.

The start-up failures here are real: a model folder vLLM could not serve is
refused before anything is launched, and an interpreter that cannot run vLLM
exits at once, which `start` reports with the end of its log instead of
waiting out the start-up timeout.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodeai.errors import EngineUnavailable, ModelFilesMissing
from nodeai.serving.engines.base import ChatMessage, GenerationRequest, SamplingParams
from nodeai.serving.engines.vllm import (
    VllmConfig,
    VllmEngine,
    VllmModelUnsupported,
    VllmRequestFailed,
    VllmStartupError,
    completion_from_openai,
    openai_request,
    select_metric_families,
    tokenize_request,
)


def checkpoint(folder: Path, head_dim: int = 64) -> Path:
    folder.mkdir()
    config = {"hidden_size": head_dim * 4, "num_attention_heads": 4, "model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


def start(engine: VllmEngine) -> None:
    asyncio.run(engine.start())


def test_import_does_not_need_vllm() -> None:
    # NOTE: in a fresh interpreter: vLLM runs in its own environment, never in ours.
    code = "import sys, nodeai.serving.engines.vllm; print(sorted({'vllm', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_model_is_refused_before_launch(tmp_path: Path) -> None:
    engine = VllmEngine(VllmConfig(model=tmp_path / "nope", python=Path(sys.executable), cache_dir=tmp_path))
    with pytest.raises(ModelFilesMissing, match="nope.*Hugging Face checkpoint folder"):
        start(engine)
    assert engine.pid is None and engine.state == "stopped"


def test_folder_without_weights_or_config_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFilesMissing, match="config.json"):
        start(VllmEngine(VllmConfig(model=empty, python=Path(sys.executable), cache_dir=tmp_path)))
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelFilesMissing, match="safetensors"):
        start(VllmEngine(VllmConfig(model=empty, python=Path(sys.executable), cache_dir=tmp_path)))


def test_small_attention_heads_are_refused(tmp_path: Path) -> None:
    model = checkpoint(tmp_path / "tiny", head_dim=16)
    with pytest.raises(VllmModelUnsupported, match="head size is 16.*>= 32"):
        start(VllmEngine(VllmConfig(model=model, python=Path(sys.executable), cache_dir=tmp_path)))


def test_missing_interpreter_says_to_run_setup(tmp_path: Path) -> None:
    engine = VllmEngine(VllmConfig(model=checkpoint(tmp_path / "m"), python=tmp_path / "no-python", cache_dir=tmp_path))
    with pytest.raises(ModelFilesMissing, match="make setup-vllm"):
        start(engine)


def test_process_that_exits_while_starting_fails_start_at_once(tmp_path: Path) -> None:
    # The main environment's python has no vllm: the real launch command exits
    # with "No module named vllm", and start() must say so without waiting.
    config = VllmConfig(model=checkpoint(tmp_path / "m"), python=Path(sys.executable), cache_dir=tmp_path,
                        startup_timeout_s=600)  # fmt: skip
    engine = VllmEngine(config)
    began = time.monotonic()
    with pytest.raises(VllmStartupError) as caught:
        start(engine)
    assert time.monotonic() - began < config.startup_timeout_s / 2
    assert "exited with exit code 1 while starting" in str(caught.value)
    assert "No module named 'vllm'" in caught.value.log_tail
    assert isinstance(caught.value, EngineUnavailable)  # the gateway answers 503
    assert engine.state == "stopped" and engine.pid is None
    with pytest.raises(EngineUnavailable, match="not started"):
        asyncio.run(engine.complete(GenerationRequest(model=config.served_model_name, prompt="x")))


def test_requests_map_to_openai_bodies() -> None:
    params = SamplingParams(max_tokens=5, temperature=0.5, top_p=0.9, stop=("\n",), seed=7, json_schema={})
    path, body = openai_request(GenerationRequest(model="m", prompt="hi", params=params), "served", stream=True)
    assert path == "/v1/completions"
    assert body == {"model": "served", "prompt": "hi", "max_tokens": 5, "temperature": 0.5, "top_p": 0.9,
                    "stop": ["\n"], "seed": 7, "structured_outputs": {"json": {"type": "object"}},
                    "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    chat = GenerationRequest(model="m", messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi")))
    path, body = openai_request(chat, "served")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert "stream" not in body and "stop" not in body and "seed" not in body
    assert tokenize_request(chat, "served") == {"model": "served", "messages": body["messages"],
                                                "add_generation_prompt": True}  # fmt: skip
    assert tokenize_request("text", "served")["add_special_tokens"] is False


def test_answers_map_to_completions() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    done = completion_from_openai({"choices": [{"text": " Paris", "finish_reason": "length"}], "usage": usage})
    assert (done.text, done.finish_reason, done.usage.total_tokens) == (" Paris", "length", 5)
    answer = {"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}], "usage": usage}
    chat = completion_from_openai(answer)
    assert (chat.text, chat.finish_reason) == ("Hi", "stop")
    with pytest.raises(EngineUnavailable, match="aborted"):
        completion_from_openai({"choices": [{"text": "", "finish_reason": "abort"}], "usage": usage})
    with pytest.raises(VllmRequestFailed, match="no token usage"):
        completion_from_openai({"choices": [{"text": "x", "finish_reason": "stop"}]})


def test_only_vllm_metric_families_are_merged() -> None:
    text = (
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 7.9e+08\n"
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="smollm2"} 0.0\n'
        'python_gc_objects_collected_total{generation="0"} 15069.0\n'
    )
    kept = select_metric_families(text)
    assert kept.splitlines() == text.splitlines()[3:6]
    assert select_metric_families("process_open_fds 34.0\n") == ""
