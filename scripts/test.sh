#!/usr/bin/env bash
# Runs the whole test suite (unit, contract fuzzing, integration on a real
# anvil) with the pinned environment. Exits non-zero when any test fails or
# when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
# NOTE: tests marked `vllm` start a real vLLM (CPU) from .venv-vllm/: its own
# 4 GB environment, 2 minutes to start, 5-10 minutes in all. They run with
# `make test-vllm` (which builds that environment), not in every CI run.
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${NODEAI_TEST_WORKERS:-2}" --dist loadfile -m "not vllm" "$@"
