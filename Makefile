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
