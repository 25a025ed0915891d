#!/usr/bin/env bash
# Runs the whole test suite (unit, contract fuzzing, integration on a real
# anvil) with the pinned environment. Exits non-zero when any test fails or
# when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${NODEAI_TEST_WORKERS:-2}" --dist loadfile "$@"
