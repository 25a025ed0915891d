# The two set-up commands of the README. Both install what they need first
# (scripts/setup.sh: .venv/ and npm packages; idempotent).
.PHONY: setup demo test test-slow gas compile

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/python scripts/demo.py

test: setup
	./scripts/test.sh

test-slow: setup
	HYPOTHESIS_PROFILE=slow ./scripts/test.sh

gas: setup
	.venv/bin/python scripts/bench/gas.py

compile: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" APE_DATA_FOLDER="$$(mktemp -d)" .venv/bin/ape compile

# vLLM (CPU) in its own environment .venv-vllm/ (from requirements-vllm.lock)
# and the SmolLM2 checkpoint it serves (first run: about 5 minutes, 4 GB).
.PHONY: setup-vllm test-vllm
setup-vllm: setup
	@./scripts/setup-vllm.sh

# The vLLM engine on a real vLLM: one start and one supervised restart (5-10 minutes).
test-vllm: setup-vllm
	.venv/bin/python -m pytest -p no:cacheprovider tests/serving/vllm
