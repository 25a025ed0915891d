"""Executors: batch inference on an Engine, input validation, the registry by kind, failure reports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from eth_utils import keccak

from nodeai.node.artifacts import ArtifactError, DirectoryStore
from nodeai.node.errors import UnsupportedJob
from nodeai.node.executors import BatchInferenceExecutor, ExecutorRegistry, JobContext, load_engine, parse_input
from nodeai.node.config import ConfigError
from nodeai.node.loop import execute_job

from .engines import WordEngine

CTX = JobContext(job_id=3, model_id=1, engine_model="words-1", price_per_1k_tokens=1_500, max_payment=10,
                 deadline=10**10, requester="0x" + "cd" * 20)


def run(coro):
    return asyncio.run(coro)


def registry(delay: float = 0.0) -> ExecutorRegistry:
    reg = ExecutorRegistry()
    reg.register(BatchInferenceExecutor(WordEngine(delay=delay), max_tokens=3))
    return reg


def test_batch_inference_output_usage_and_capped_charge() -> None:
    doc = {"kind": "batch-inference", "messages": [[{"role": "user", "content": "a b c d e"}]], "max_tokens": 50}
    result = run(registry().execute(CTX, json.dumps(doc).encode()))
    output = json.loads(result.output)
    assert output["results"] == [{"text": "e d c", "finish_reason": "length", "prompt_tokens": 5, "completion_tokens": 3}]
    assert result.usage == 8 and result.output_hash == keccak(result.output)
    assert result.charge == 10  # ceil(8 * 1500 / 1000) = 12, capped at maxPayment 10


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", 'JSON object with a string "kind"'),
    (b'{"kind": "video"}', "no executor for job kind 'video'"),
    (b'{"kind": "batch-inference"}', 'exactly one of "prompts"'),
    (b'{"kind": "batch-inference", "prompts": []}', "1 to 256 prompts"),
    (b'{"kind": "batch-inference", "prompts": [1]}', "must be strings"),
    (b'{"kind": "batch-inference", "prompts": ["x"], "max_tokens": 0}', "max_tokens must be >= 1"),
    (b'{"kind": "batch-inference", "messages": [[{"role": "user"}]]}', "bad batch-inference input"),
])  # fmt: skip
def test_bad_inputs_are_unsupported_jobs_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(UnsupportedJob, match=message):
        run(registry().execute(CTX, data))


def test_execute_job_reports_failures_instead_of_raising(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "a")
    bad = store.add_bytes(b'{"kind": "nope"}')
    stored = run(execute_job(registry(), store, CTX, bad))
    report = json.loads(store.get_bytes(stored.output_cid))
    assert report["kind"] == "error" and "no executor" in report["error"] and stored.charge == 0
    # a CID whose bytes were changed on disk is refused, named, and reported
    good = store.add_bytes(b'{"kind": "batch-inference", "prompts": ["x"]}')
    (tmp_path / "a" / good).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_bytes(good)
    stored = run(execute_job(registry(), store, CTX, good))
    assert "corrupt" in json.loads(store.get_bytes(stored.output_cid))["error"]


def test_engine_factory_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="must look like"):
        load_engine("no-colon", {})
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_engine("nodeai.nowhere:Engine", {})
    with pytest.raises(ConfigError, match="do not fit"):
        load_engine("tests.node.engines:WordEngine", {"colour": "red"})
    with pytest.raises(ConfigError, match="not a serving Engine"):
        load_engine("pathlib:Path", {})
    assert isinstance(load_engine("tests.node.engines:WordEngine", {"delay": 0.0}), WordEngine)


def test_parse_input() -> None:
    assert parse_input(b'{"kind": "agent", "x": 1}') == {"kind": "agent", "x": 1}
