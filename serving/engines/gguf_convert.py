"""Convert a GGUF model's weights to another type once, with llama.cpp's own quantizer, and cache the result.

Why: SmolLM2 is published as Q4_1, and llama.cpp's CPU backend has no
batched matrix kernel for Q4_1 (its tinyBLAS/llamafile GEMM covers F16,
BF16, Q8_0 and a few others), so a batch of 8 sequences costs nearly 8
single-token passes. The same weights as Q8_0 take the GEMM path: measured
here, `scripts/bench/engines.py --weights` compares both in one run.

The conversion reads the source's weights (dequantizing them) and writes the
new type; it takes under a second for a 135M model. The result is cached by
the source's SHA-256, so a model fetched again from IPFS, or a second engine
in the same test run, reuses it. Files are written under a temporary name
and renamed, so concurrent processes never see half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from nodeai.errors import InvalidGenerationParams

__all__ = ["WEIGHT_TYPES", "default_cache_dir", "converted_model"]

WEIGHT_TYPES = ("Q8_0", "F16")
"""Types a model may be converted to (llama.cpp file types)."""

_lock = threading.Lock()


def default_cache_dir() -> Path:
    """$NODEAI_CACHE_DIR, else $XDG_CACHE_HOME/nodeai, else ~/.cache/nodeai."""
    explicit = os.environ.get("NODEAI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nodeai"


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def converted_model(source: Path, weight_type: str, cache_dir: Path | None = None, lc: Any = None) -> Path:
    """Path of ``source`` with its weights in ``weight_type``, converting it on the first call."""
    if weight_type not in WEIGHT_TYPES:
        raise InvalidGenerationParams(
            "convert_weights", f"{weight_type!r} is not supported; use one of {', '.join(WEIGHT_TYPES)} or None"
        )
    if not source.is_file():
        raise InvalidGenerationParams("model_path", f"{source} is not a file: point it at a GGUF model")
    folder = (cache_dir or default_cache_dir()) / "gguf"
    target = folder / f"{_digest(source)[:32]}.{weight_type.lower()}.gguf"
    if target.is_file():
        return target
    if lc is None:
        import llama_cpp as lc  # noqa: PLC0415 - loads the native library
    folder.mkdir(parents=True, exist_ok=True)
    params = lc.llama_model_quantize_default_params()
    params.ftype = {"Q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0, "F16": lc.LLAMA_FTYPE_MOSTLY_F16}[weight_type]
    params.allow_requantize = True
    params.nthread = max(1, min(4, os.cpu_count() or 1))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".part")
    os.close(fd)
    try:
        with _lock:  # NOTE: one conversion at a time in a process; each takes all the threads it is given
            rc = lc.llama_model_quantize(str(source).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            raise InvalidGenerationParams(
                "convert_weights", f"llama.cpp could not convert {source} to {weight_type} (code {rc}): "
                "is it a GGUF model? Set convert_weights to None to serve the file as it is",
            )  # fmt: skip
        os.chmod(tmp, 0o644)  # NOTE: mkstemp makes it private; the cache is shared like the model it comes from
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
