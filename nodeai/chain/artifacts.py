"""Compiled contracts (ABI + bytecode), cached on disk by source hash.

The Vyper sources live in ``contracts/`` at the repository root. Compiling
the suite takes a few seconds, so results are kept in ``.build/contracts``
under a key made of every source file's hash and the compiler version: any
edit to any contract or module recompiles everything that could depend on it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import vyper

from nodeai.errors import CompileError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
BUILD_DIR = REPO_ROOT / ".build" / "contracts"

SUITE = ("TestToken", "ModelRegistry", "ProviderRegistry", "JobMarket", "InferenceEscrow", "ReceiptRegistry")


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str


def sources_fingerprint() -> str:
    digest = hashlib.sha256(vyper.__version__.encode())
    for path in sorted(CONTRACTS_DIR.rglob("*.vy*")):
        digest.update(path.relative_to(CONTRACTS_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_artifact(name: str) -> Artifact:
    """The artifact of ``contracts/<name>.vy``, compiled on first use."""
    source = CONTRACTS_DIR / f"{name}.vy"
    if not source.is_file():
        raise FileNotFoundError(f"no contract {source}; known contracts: {', '.join(SUITE)}")
    cached = BUILD_DIR / f"{name}-{sources_fingerprint()}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        return Artifact(name, data["abi"], data["bytecode"])
    result = subprocess.run(
        [sys.executable, "-m", "vyper", "-f", "abi,bytecode", str(source)],
        capture_output=True,
        text=True,
        cwd=CONTRACTS_DIR,
    )
    if result.returncode != 0:
        raise CompileError(name, result.stderr.strip())
    abi_line, bytecode_line = result.stdout.strip().splitlines()[-2:]
    artifact = Artifact(name, json.loads(abi_line), bytecode_line.strip())
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps({"abi": artifact.abi, "bytecode": artifact.bytecode}))
    tmp.replace(cached)  # NOTE: atomic, so parallel test workers never read half a file
    return artifact
