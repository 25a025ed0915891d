"""Reconciliation over every (local record, chain view) combination: never claims or submits twice,
never gives up a claimed job with time left, never recomputes a stored result."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.chain.jobs import JobState
from nodeai.node.reconcile import Action, ChainView, LocalView, next_action
from nodeai.node.state import Phase
from nodeai.node.tx import TxStatus

ACTIVE = [p for p in Phase if not p.is_terminal]
AFTER_RESULT = {Phase.RESULT_STORED, Phase.SUBMITTING, Phase.SUBMITTED, Phase.FINALIZING}


@st.composite
def local_views(draw: st.DrawFn) -> LocalView:
    phase = draw(st.sampled_from(ACTIVE))
    tx = draw(st.sampled_from(list(TxStatus))) if phase.step else None
    # NOTE: a record past RESULT_STORED always holds its output; before it, it may or may not (a worker's result)
    has_result = True if phase in AFTER_RESULT else draw(st.booleans())
    return LocalView(phase, tx, has_result)


@st.composite
def chain_views(draw: st.DrawFn) -> ChainView:
    state = draw(st.sampled_from(list(JobState)))
    now = draw(st.integers(1_000, 2_000))
    return ChainView(
        state=state, ours=draw(st.booleans()) if state is not JobState.OPEN else False, now=now,
        deadline=draw(st.integers(900, 2_100)),
        window_ends=draw(st.integers(900, 2_100)) if state in (JobState.SUBMITTED, JobState.DISPUTED) else 0,
        priority_until=draw(st.integers(0, 2_100)), priority_ours=draw(st.booleans()),
    )  # fmt: skip


@given(local_views(), chain_views())
def test_safety_over_every_combination(local: LocalView, chain: ChainView) -> None:
    action = next_action(local, chain).action
    pending = local.tx in (TxStatus.PENDING, TxStatus.MINED)
    if action is Action.CLAIM:
        assert chain.state is JobState.OPEN and chain.now < chain.deadline
        assert not (local.phase is Phase.CLAIMING and pending), "a second claim while ours is in flight"
        assert chain.priority_ours or chain.now >= chain.priority_until
    if action is Action.SUBMIT:
        assert chain.state is JobState.CLAIMED and chain.ours and chain.now < chain.deadline and local.has_result
        assert not (local.phase is Phase.SUBMITTING and pending), "a second submission while ours is in flight"
    if action is Action.EXECUTE:
        assert chain.state is JobState.CLAIMED and chain.ours and not local.has_result, "a stored result recomputed"
    if action is Action.FINALIZE:
        assert chain.state in (JobState.SUBMITTED, JobState.DISPUTED) and chain.ours and chain.now >= chain.window_ends
    # a job claimed by us with time left is never given up
    if chain.state is JobState.CLAIMED and chain.ours and chain.now < chain.deadline:
        assert action in (Action.EXECUTE, Action.SUBMIT, Action.WAIT_TX)
    # final on chain -> final locally, whatever the record said
    if chain.state is JobState.SETTLED:
        assert action is (Action.MARK_FINALIZED if chain.ours else Action.MARK_LOST)
    if chain.state is JobState.REFUNDED:
        assert action is Action.MARK_REFUNDED
    if chain.state is not JobState.OPEN and not chain.ours and not chain.state.is_final:
        assert action is Action.MARK_LOST


@given(local_views(), chain_views())
def test_deterministic(local: LocalView, chain: ChainView) -> None:
    assert next_action(local, chain) == next_action(local, chain)


class _Chain:
    """A model of the job on chain plus the mempool: what the daemon's transactions do to it."""

    def __init__(self) -> None:
        self.state, self.now, self.window_ends = JobState.OPEN, 0, 0
        self.mempool: dict[int, str] = {}   # tx id -> step, broadcast and not mined
        self.mined: dict[int, bool] = {}    # tx id -> succeeded
        self.effects = {"claim": 0, "submit": 0, "finalize": 0}
        self.reverted = 0

    def view(self) -> ChainView:
        return ChainView(self.state, self.state is not JobState.OPEN, self.now, deadline=10**6, window_ends=self.window_ends)

    def status(self, tx: int | None) -> TxStatus:
        if tx in self.mined:
            return TxStatus.MINED if self.mined[tx] else TxStatus.FAILED
        return TxStatus.PENDING if tx in self.mempool else TxStatus.UNKNOWN

    def mine(self, tx: int) -> None:
        step = self.mempool.pop(tx)
        allowed = {"claim": JobState.OPEN, "submit": JobState.CLAIMED, "finalize": JobState.SUBMITTED}[step]
        ok = self.state is allowed and (step != "finalize" or self.now >= self.window_ends)
        self.mined[tx] = ok
        if not ok:
            self.reverted += 1
            return
        self.effects[step] += 1
        self.state = {"claim": JobState.CLAIMED, "submit": JobState.SUBMITTED, "finalize": JobState.SETTLED}[step]
        if step == "submit":
            self.window_ends = self.now + 60


STEP_PHASE = {"claim": Phase.CLAIMING, "submit": Phase.SUBMITTING, "finalize": Phase.FINALIZING}
DONE_PHASE = {"claim": Phase.CLAIMED, "submit": Phase.SUBMITTED, "finalize": Phase.FINALIZED}


@given(st.lists(st.sampled_from(["crash_before_send", "crash_after_send", "crash_executing", "drop", "delay", "go"]),
                min_size=0, max_size=60))
def test_a_daemon_crashing_anywhere_claims_and_submits_once(events: list[str]) -> None:
    """The job loop as the daemon runs it (record, then act), against a model chain and mempool, with
    crashes, dropped and delayed transactions wherever hypothesis puts them: one claim, one submission,
    one settlement, and no transaction that reverts."""
    chain, script = _Chain(), iter(events)
    phase, tx, has_result, txs = Phase.SEEN, None, False, 0
    for _ in range(400):
        if phase.is_terminal:
            break
        event = next(script, "go")
        if event == "drop" and chain.mempool:
            chain.mempool.pop(next(iter(chain.mempool)))
        if event != "delay":
            for pending in list(chain.mempool):
                chain.mine(pending)
        decision = next_action(LocalView(phase, chain.status(tx) if phase.step else None, has_result), chain.view())
        action = decision.action
        if action.sends_tx:
            step = action.value
            txs += 1
            phase, tx = STEP_PHASE[step], txs  # written before the broadcast
            if event == "crash_before_send":
                continue  # the process died: the record says "sending", the node never saw it
            chain.mempool[tx] = step
            if event in ("crash_after_send", "delay", "drop"):
                continue  # died (or the tx is slow): the receipt is not awaited
            chain.mine(tx)
            phase = DONE_PHASE[step]
        elif action is Action.EXECUTE:
            phase = Phase.EXECUTING
            if event == "crash_executing":
                continue
            phase, has_result = Phase.RESULT_STORED, True
        elif action is Action.WAIT_WINDOW:
            chain.now += 30
            phase = Phase.SUBMITTED
        elif action is Action.WAIT_TX:
            continue
        elif action is Action.MARK_FINALIZED:
            phase = Phase.FINALIZED
        else:
            raise AssertionError(f"unexpected {action} ({decision.reason}) on a job nobody else touches")
    assert phase is Phase.FINALIZED and chain.state is JobState.SETTLED
    assert chain.effects == {"claim": 1, "submit": 1, "finalize": 1}
    assert chain.reverted == 0, "a transaction was sent that the chain refused: a duplicate"


def test_the_happy_path_in_order() -> None:
    def chain(state: JobState, now: int = 100, window: int = 0) -> ChainView:
        return ChainView(state, state is not JobState.OPEN, now, deadline=1_000, window_ends=window)

    assert next_action(LocalView(Phase.SEEN), chain(JobState.OPEN)).action is Action.CLAIM
    assert next_action(LocalView(Phase.CLAIMING, TxStatus.PENDING), chain(JobState.OPEN)).action is Action.WAIT_TX
    assert next_action(LocalView(Phase.CLAIMING, TxStatus.UNKNOWN), chain(JobState.OPEN)).action is Action.CLAIM
    assert next_action(LocalView(Phase.CLAIMING, TxStatus.MINED), chain(JobState.CLAIMED)).action is Action.EXECUTE
    assert next_action(LocalView(Phase.EXECUTING), chain(JobState.CLAIMED)).action is Action.EXECUTE
    assert next_action(LocalView(Phase.RESULT_STORED, None, True), chain(JobState.CLAIMED)).action is Action.SUBMIT
    assert next_action(LocalView(Phase.SUBMITTING, TxStatus.PENDING, True), chain(JobState.CLAIMED)).action is Action.WAIT_TX
    assert next_action(LocalView(Phase.SUBMITTING, TxStatus.MINED, True), chain(JobState.SUBMITTED, 100, 160)).action is Action.WAIT_WINDOW
    assert next_action(LocalView(Phase.SUBMITTED, None, True), chain(JobState.SUBMITTED, 160, 160)).action is Action.FINALIZE
    assert next_action(LocalView(Phase.FINALIZING, TxStatus.MINED, True), chain(JobState.SETTLED)).action is Action.MARK_FINALIZED
    assert next_action(LocalView(Phase.CLAIMED), chain(JobState.CLAIMED, now=1_000)).action is Action.MARK_FAILED


def test_terminal_records_are_not_reconciled() -> None:
    with pytest.raises(ValueError, match="not reconciled"):
        next_action(LocalView(Phase.FINALIZED), ChainView(JobState.SETTLED, True, 1, 2, 0))
