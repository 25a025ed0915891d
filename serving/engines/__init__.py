"""Model engines behind the gateway and the agent runtime.

`base` defines the interface; the embedded CPU engines are `LlamaCppEngine`
(generation, llama.cpp with continuous batching) and `OnnxEmbeddingEngine`
(embeddings, ONNX Runtime with micro-batching); `embedded_cpu_engine()`
serves both from one object. Native libraries (llama.cpp, ONNX Runtime) load
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
    "embedded_cpu_engine",
]
