#!/usr/bin/env bash
# Idempotent set-up: the virtual environment at .venv/ with the pinned Python
# packages (requirements.lock) and this project installed editable, plus the
# npm packages (anvil). A stamp of the inputs' hashes skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
STAMP=.venv/.nodeai-setup-stamp
want="$(cat requirements.lock pyproject.toml package.json package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || [ ! -x node_modules/.bin/anvil ]; then
    echo "setup: installing Python packages from requirements.lock (first run: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" "wheel==0.45.1"
    .venv/bin/python -m pip install --quiet -r requirements.lock
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "setup: installing npm packages (anvil)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" > "$STAMP"
fi
