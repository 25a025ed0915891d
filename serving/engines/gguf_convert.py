"""Convert a GGUF model's weights to another type once, with llama.cpp's own quantizer, and cache the result.

Why: SmolLM2 is published as Q4_1, and llama.cpp's CPU backend has no
batched matrix kernel for Q4_1 (its tinyBLAS/llamafile GEMM covers F16,
BF16, Q8_0 and a few others), so a batch of 8 sequences costs nearly 8
single-token passes. The same weights as Q8_0 take the GEMM path: measured
here, `scripts/bench/engines.py --weights` compares both in one run.

Only models of fewer than 8 bits a weight are converted (the GGUF header's
`general.file_type`); F32, F16, BF16 and Q8_0 files are served as they are.
The conversion reads the source's weights (dequantizing them) and writes the
new type; it takes under a second for a 135M model. The result is cached by
the source's path, size and modification time, so a second engine (or the
next start) reuses it. Files are written under a temporary name
and renamed, so concurrent processes never see half a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

from nodeai.errors import InvalidGenerationParams

__all__ = ["WEIGHT_TYPES", "default_cache_dir", "converted_model", "gguf_file_type"]

WEIGHT_TYPES = ("Q8_0", "F16")
"""Types a model may be converted to (llama.cpp file types)."""

_lock = threading.Lock()
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$NODEAI_CACHE_DIR, else $XDG_CACHE_HOME/nodeai, else ~/.cache/nodeai."""
    explicit = os.environ.get("NODEAI_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nodeai"


# NOTE: llama.cpp file types of 8 bits or more a weight; converting those to Q8_0 would lose precision.
_WIDE_FILE_TYPES = {0: "F32", 1: "F16", 7: "Q8_0", 32: "BF16"}
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_file_type(path: Path) -> int | None:
    """The ``general.file_type`` of a GGUF file (llama_ftype), read from its header; None when absent."""
    with path.open("rb") as f:

        def read(fmt: str) -> Any:
            size = struct.calcsize("<" + fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError("the file ends inside its GGUF header")
            return struct.unpack("<" + fmt, data)[0]

        def skip(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                f.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), os.SEEK_CUR)
            elif kind == 8:
                f.seek(read("Q"), os.SEEK_CUR)
            elif kind == 9:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:
                    f.seek(count * struct.calcsize("<" + _GGUF_SCALARS[item]), os.SEEK_CUR)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        read("I")  # version
        read("Q")  # tensor count
        for _ in range(read("Q")):
            key = f.read(read("Q"))
            kind = read("I")
            if key == b"general.file_type" and kind in (4, 5):
                return int(read(_GGUF_SCALARS[kind]))
            skip(kind)
    return None


def _cache_key(path: Path) -> str:
    # NOTE: path, size and modification time, not a hash of the content: a multi-GB model
    # would take seconds to hash on every start. A file changed in place gets a new key.
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]


def converted_model(source: Path, weight_type: str, cache_dir: Path | None = None, lc: Any = None) -> Path:
    """Path of ``source`` with its weights in ``weight_type``, converting it on the first call."""
    if weight_type not in WEIGHT_TYPES:
        raise InvalidGenerationParams(
            "convert_weights", f"{weight_type!r} is not supported; use one of {', '.join(WEIGHT_TYPES)} or None"
        )
    if not source.is_file():
        raise InvalidGenerationParams("model_path", f"{source} is not a file: point it at a GGUF model")
    try:
        file_type = gguf_file_type(source)
    except (OSError, ValueError, struct.error) as exc:
        raise InvalidGenerationParams(
            "model_path", f"{source} is not a readable GGUF model ({exc}); set convert_weights to None "
            "to let llama.cpp try it as it is",
        ) from exc  # fmt: skip
    if file_type is None or file_type in _WIDE_FILE_TYPES:
        # NOTE: already 8 bits or more a weight (or of unknown type): served as it is.
        return source
    folder = (cache_dir or default_cache_dir()) / "gguf"
    target = folder / f"{_cache_key(source)}.{weight_type.lower()}.gguf"
    if target.is_file():
        return target
    log.info("converting %s (llama.cpp file type %d) to %s in %s, once", source, file_type, weight_type, target)
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
