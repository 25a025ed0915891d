"""Test-suite wide set-up: hermetic tool caches and hypothesis profiles.

Tools write caches into $HOME (~/.ape, ~/.vvm, ~/.foundry, titanoboa's
cache); every one of them is pointed into a per-run temporary folder before
any of those tools is imported, so a test run never reads or leaves state
outside the repository and /tmp.
"""

from __future__ import annotations

import os
import tempfile

_HERMETIC_HOME = tempfile.mkdtemp(prefix="nodeai-test-home-")
os.environ["NODEAI_TEST_HOME"] = _HERMETIC_HOME
os.environ["APE_DATA_FOLDER"] = os.path.join(_HERMETIC_HOME, "ape")
os.environ["VVM_BINARY_PATH"] = os.path.join(_HERMETIC_HOME, "vvm")
os.environ["XDG_CACHE_HOME"] = os.path.join(_HERMETIC_HOME, "cache")
os.environ["FOUNDRY_DIR"] = os.path.join(_HERMETIC_HOME, "foundry")
# NOTE: two test workers share two cores; an engine with two spinning ggml
# threads per worker would wait on its partner thread (see LlamaCppConfig).
os.environ.setdefault("NODEAI_LLAMA_THREADS", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

# NOTE: "ci" is the default: at least 1,000 examples for every stateful
# invariant test (they set their own max_examples from the profile), no
# deadline because a 2-core CI box has noisy timings.
# NOTE: on CI (CI=true) examples are derandomized, so a submission's result does not
# depend on the seed it drew; `make test-slow` and local runs keep exploring new seeds.
settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True,
    derandomize=os.environ.get("CI") == "true",
)
settings.register_profile(
    "slow", max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
