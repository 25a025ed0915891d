"""Converting a GGUF model's weights once (llama.cpp's quantizer) and reusing the cached result."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeai.errors import InvalidGenerationParams
from nodeai.serving.engines import packaged
from nodeai.serving.engines.gguf_convert import converted_model, gguf_file_type
from nodeai.serving.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from nodeai.serving.engines.base import GenerationRequest, SamplingParams


def test_q8_0_conversion_is_cached_and_answers(tmp_path: Path) -> None:
    source = packaged.smollm2_gguf()
    target = converted_model(source, "Q8_0", tmp_path)
    assert target.parent == tmp_path / "gguf" and target.name.endswith(".q8_0.gguf")
    # Q8_0 holds 8.5 bits a weight, Q4_1 5: the file grows by about half.
    assert 1.3 < target.stat().st_size / source.stat().st_size < 1.7
    before = target.stat().st_mtime_ns
    assert converted_model(source, "Q8_0", tmp_path) == target and target.stat().st_mtime_ns == before
    assert not list(target.parent.glob("*.part"))  # no temporary file left behind

    engine = LlamaCppEngine(LlamaCppConfig(n_ctx=256, n_seq_max=1, convert_weights="Q8_0", cache_dir=tmp_path))
    engine.start_sync()
    try:
        done = engine.complete_sync(GenerationRequest(
            model=engine.config.model_id, prompt="The capital of France is",
            params=SamplingParams(max_tokens=4, temperature=0.0)))  # fmt: skip
    finally:
        engine.close_sync()
    assert "Paris" in done.text


def test_wide_models_are_served_as_they_are(tmp_path: Path) -> None:
    source = packaged.smollm2_gguf()
    assert gguf_file_type(source) == 3  # LLAMA_FTYPE_MOSTLY_Q4_1
    q8 = converted_model(source, "Q8_0", tmp_path)
    assert gguf_file_type(q8) == 7  # Q8_0: 8 bits a weight already, so never converted again
    assert converted_model(q8, "Q8_0", tmp_path / "other") == q8
    assert not (tmp_path / "other").exists()


def test_bad_conversions_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InvalidGenerationParams, match="use one of Q8_0, F16 or None"):
        converted_model(packaged.smollm2_gguf(), "Q2_K", tmp_path)
    junk = tmp_path / "not-a-model.gguf"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(InvalidGenerationParams, match="not a readable GGUF model .*no GGUF magic.* set convert_weights to None"):
        converted_model(junk, "Q8_0", tmp_path)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(packaged.smollm2_gguf().read_bytes()[:100])
    with pytest.raises(InvalidGenerationParams, match="ends inside its GGUF header"):
        converted_model(cut, "Q8_0", tmp_path)
    assert not (tmp_path / "gguf").exists()
    with pytest.raises(InvalidGenerationParams, match="is not a file"):
        converted_model(tmp_path / "missing.gguf", "Q8_0", tmp_path)
