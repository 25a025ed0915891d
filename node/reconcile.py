"""Reconciliation: (local record, the chain's view of the job) -> the next action. Pure.

The job loop asks this function what to do at every step, in normal running
and after a crash alike, so there is one definition of "safe" for both. The
chain is the source of truth; the local record only adds what the chain
cannot know (a transaction signed but not mined yet, an output already
computed and stored). The guarantees, checked by hypothesis over every
combination in ``tests/node/test_reconcile.py``:

* a claim is sent only for a job that is open on chain, before its deadline,
  with no claim of ours pending; a submission only for a job claimed by us,
  with a stored result, before the deadline, with no submission of ours pending;
* a job claimed by us with time left is never given up (it is executed or submitted);
* an output already stored is submitted, never recomputed;
* a job settled or refunded on chain ends locally, whatever the record said.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nodeai.chain.jobs import JobState
from nodeai.node.state import Phase
from nodeai.node.tx import TxStatus

__all__ = ["Action", "ChainView", "LocalView", "Decision", "next_action"]


class Action(str, Enum):
    CLAIM = "claim"
    WAIT_TX = "wait_tx"            # a transaction of ours for this step is in the mempool: wait (and bump)
    WAIT_PRIORITY = "wait_priority"  # another provider's exclusive claim window is open
    EXECUTE = "execute"
    SUBMIT = "submit"
    WAIT_WINDOW = "wait_window"    # submitted (or disputed): wait for the window to end
    FINALIZE = "finalize"
    MARK_FINALIZED = "mark_finalized"
    MARK_REFUNDED = "mark_refunded"
    MARK_LOST = "mark_lost"
    MARK_FAILED = "mark_failed"

    @property
    def is_terminal(self) -> bool:
        return self in (Action.MARK_FINALIZED, Action.MARK_REFUNDED, Action.MARK_LOST, Action.MARK_FAILED)

    @property
    def sends_tx(self) -> bool:
        return self in (Action.CLAIM, Action.SUBMIT, Action.FINALIZE)


@dataclass(frozen=True, slots=True)
class ChainView:
    """The job as the chain holds it now (from a struct whose commitment matches the contract's)."""

    state: JobState
    ours: bool              # the job's provider is this daemon's address
    now: int                # timestamp of the latest block
    deadline: int
    window_ends: int        # end of the challenge (or arbitration) window; 0 before a submission
    priority_until: int = 0
    priority_ours: bool = True  # no priority provider, or it is us


@dataclass(frozen=True, slots=True)
class LocalView:
    """What the local record adds: its phase, the status of its step's latest transaction, a stored result."""

    phase: Phase
    tx: TxStatus | None = None  # of the latest transaction of phase.step, when the phase has one
    has_result: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str


def _pending(local: LocalView, phase: Phase) -> bool:
    """Our transaction for ``phase``'s step is in the mempool, or mined while the view still shows the
    state before it (the view was read a block earlier): either way, sending another would be a second one."""
    return local.phase is phase and local.tx in (TxStatus.PENDING, TxStatus.MINED)


def next_action(local: LocalView, chain: ChainView) -> Decision:
    """What to do next for one job whose local phase is not terminal (terminal records are done)."""
    if local.phase.is_terminal:
        raise ValueError(f"a {local.phase.value} job is not reconciled any more")
    state = chain.state
    if state is JobState.SETTLED:
        if chain.ours:
            return Decision(Action.MARK_FINALIZED, "settled on chain")
        return Decision(Action.MARK_LOST, "settled for another provider")
    if state is JobState.REFUNDED:
        return Decision(Action.MARK_REFUNDED, "refunded on chain")

    if state is JobState.OPEN:
        if _pending(local, Phase.CLAIMING):
            return Decision(Action.WAIT_TX, "our claim is in the mempool")
        if chain.now >= chain.deadline:
            return Decision(Action.MARK_LOST, "deadline passed before a claim")
        if not chain.priority_ours and chain.now < chain.priority_until:
            return Decision(Action.WAIT_PRIORITY, "inside another provider's exclusive claim window")
        return Decision(Action.CLAIM, "open" if local.phase is Phase.SEEN else f"open again while {local.phase.value}")

    if not chain.ours:
        return Decision(Action.MARK_LOST, f"{state.name.lower()} by another provider")

    if state is JobState.CLAIMED:
        if chain.now >= chain.deadline:
            return Decision(Action.MARK_FAILED, "deadline passed before our result was submitted (the bond is forfeit)")
        if _pending(local, Phase.SUBMITTING):
            return Decision(Action.WAIT_TX, "our submission is in the mempool")
        if local.has_result:
            return Decision(Action.SUBMIT, "result stored, not yet on chain")
        return Decision(Action.EXECUTE, "claimed by us, no result yet")

    # SUBMITTED or DISPUTED by us
    if chain.now < chain.window_ends:
        what = "challenge" if state is JobState.SUBMITTED else "arbitration"
        return Decision(Action.WAIT_WINDOW, f"{what} window open")
    if _pending(local, Phase.FINALIZING):
        return Decision(Action.WAIT_TX, "our finalize is in the mempool")
    return Decision(Action.FINALIZE, "window over")
