"""Pure logic of the CPU engines: stop strings, admission, prefill budget,
embedding batch planning and pooling (hypothesis, no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.errors import InvalidGenerationParams
from nodeai.serving.engines.base import SamplingParams
from nodeai.serving.engines.llamacpp import StopScanner, admit, common_prefix, pick_slot, prefill_chunks, validate_params
from nodeai.serving.engines.onnx_embed import mean_pool_normalize, plan_batches

# Small alphabet so stop strings actually occur in the generated text.
text_st = st.text(alphabet="ab\n\u00e9\U0001f642", max_size=40)
stops_st = st.lists(st.text(alphabet="ab\n\u00e9\U0001f642", min_size=0, max_size=4), max_size=3)


def reference_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Feed one character at a time; cut before the first stop string to complete."""
    for end in range(len(text) + 1):
        done = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if done:
            return text[: min(done)], True
    return text, False


@given(text=text_st, stops=stops_st, cuts=st.lists(st.integers(0, 40), max_size=12))
def test_stop_scanner_emits_exactly_the_text_before_the_first_stop(text: str, stops: list[str], cuts: list[int]):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    scanner = StopScanner(stops)
    out, stopped = [], False
    for piece in pieces:
        emit, stopped = scanner.feed(piece)
        out.append(emit)
        if stopped:
            break
        # Never emit a complete stop string, and nothing after it.
        assert not any(s and s in "".join(out) for s in stops)
    if not stopped:
        out.append(scanner.flush())
    assert ("".join(out), stopped) == reference_stop(text, stops)


def test_stop_scanner_holds_back_a_possible_stop_and_releases_it():
    scanner = StopScanner(["</end>"])
    assert scanner.feed("answer </e") == ("answer ", False)
    assert scanner.feed("nvelope") == ("</envelope", False)
    assert scanner.feed(" x</end> more") == (" x", True)
    assert scanner.feed("later") == ("", True)


@given(
    cells=st.lists(st.integers(1, 100), max_size=20),
    free_slots=st.integers(0, 10),
    free_cells=st.integers(0, 500),
)
def test_admit_is_fifo_and_within_slots_and_cells(cells: list[int], free_slots: int, free_cells: int):
    n = admit(cells, free_slots, free_cells)
    assert 0 <= n <= min(free_slots, len(cells))
    assert sum(cells[:n]) <= free_cells
    # It stops only when the next one does not fit (no needless waiting).
    if n < len(cells) and n < free_slots:
        assert sum(cells[: n + 1]) > free_cells


tokens_st = st.lists(st.integers(0, 3), max_size=8)


@given(
    cached=st.lists(st.tuples(tokens_st, st.integers(0, 5)), min_size=1, max_size=6),
    tokens=st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
def test_pick_slot_takes_the_longest_reusable_prefix_then_the_least_recently_used(
    cached: list[tuple[list[int], int]], tokens: list[int]
):
    held = [c for c, _ in cached]
    used = [u for _, u in cached]
    index, reuse = pick_slot(held, used, tokens)
    reuses = [min(common_prefix(h, tokens), len(tokens) - 1) for h in held]
    assert reuse == reuses[index] == max(reuses)
    assert tokens[:reuse] == held[index][:reuse] and reuse < len(tokens)
    assert used[index] == min(u for u, r in zip(used, reuses) if r == reuse)


@given(remaining=st.lists(st.integers(0, 600), max_size=10), budget=st.integers(0, 512))
def test_prefill_chunks_fill_the_budget_in_arrival_order(remaining: list[int], budget: int):
    chunks = prefill_chunks(remaining, budget)
    assert len(chunks) == len(remaining)
    assert all(0 <= c <= r for c, r in zip(chunks, remaining))
    assert sum(chunks) == min(budget, sum(remaining))
    # A later sequence gets tokens only once the earlier ones are fully served.
    for i, c in enumerate(chunks):
        if c > 0:
            assert all(chunks[j] == remaining[j] for j in range(i))


@pytest.mark.parametrize(
    "params, field",
    [
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(temperature=-0.1), "temperature"),
        (SamplingParams(temperature=2.5), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(stop=(3,)), "stop"),  # type: ignore[arg-type]
        (SamplingParams(json_schema="object"), "json_schema"),  # type: ignore[arg-type]
    ],
)
def test_invalid_sampling_params_name_the_field(params: SamplingParams, field: str):
    with pytest.raises(InvalidGenerationParams, match=f"invalid {field}"):
        validate_params(params)


@given(lengths=st.lists(st.integers(1, 300), max_size=60), budget=st.integers(300, 5000))
def test_plan_batches_covers_every_input_once_within_budget(lengths: list[int], budget: int):
    runs = plan_batches(lengths, budget)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    for run in runs:
        assert len(run) == 1 or len(run) * max(lengths[i] for i in run) <= budget


@given(
    seed=st.integers(0, 2**32 - 1),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    extra=st.integers(0, 5),
)
def test_mean_pooling_ignores_padding_and_normalises(seed: int, lengths: list[int], extra: int):
    rng = np.random.default_rng(seed)
    width = max(lengths) + extra
    hidden = rng.normal(size=(len(lengths), width, 8)).astype(np.float32)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    pooled = mean_pool_normalize(hidden, mask)
    for row, n in enumerate(lengths):
        expected = hidden[row, :n].mean(axis=0)
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(pooled[row], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
