"""Model engines behind the gateway and the agent runtime.

`base` defines the interface; the embedded CPU engines are `LlamaCppEngine`
(generation, llama.cpp with continuous batching) and `OnnxEmbeddingEngine`
(embeddings, ONNX Runtime with micro-batching); `embedded_cpu_engine()`
serves both from one object. `VllmEngine` launches and supervises a vLLM
server from its own environment (`make setup-vllm`). Native libraries (llama.cpp, ONNX Runtime) load
only when an engine starts, so importing this package is cheap.
"""

from .base import (
    ChatMessage,
    Completion,
    Delta,
    Embeddings,
    Engine,
    EngineHealth,
    GenerationRequest,
    ModelCard,
    SamplingParams,
    Usage,
)
from .embedded import CompositeEngine, embedded_cpu_engine
from .llamacpp import LlamaCppConfig, LlamaCppEngine
from .onnx_embed import OnnxEmbeddingConfig, OnnxEmbeddingEngine
from .vllm import VllmConfig, VllmEngine

__all__ = [
    "ChatMessage",
    "Completion",
    "CompositeEngine",
    "Delta",
    "Embeddings",
    "Engine",
    "EngineHealth",
    "GenerationRequest",
    "LlamaCppConfig",
    "LlamaCppEngine",
    "ModelCard",
    "OnnxEmbeddingConfig",
    "OnnxEmbeddingEngine",
    "SamplingParams",
    "Usage",
    "VllmConfig",
    "VllmEngine",
    "embedded_cpu_engine",
]
