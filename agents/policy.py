"""Policy decisions (pure): what an agent may do, given its spec's policy and what it already did.

Nothing here reads a clock, a database or the chain: the callers (the
policy-gated signer, the worker loop, the HTTP tool) pass in the amounts
already spent in each cap's window, the recent tool calls and ``now``. That
keeps the rules small enough to read and lets hypothesis check the invariants
(a sliding-window cap is never exceeded, whatever sequence of spends is tried).

Transactions are judged by their **calldata**, not by what a tool or a model
says they do: ``decode_spends`` reads the amount out of ``transfer``,
``approve``, ``transferFrom`` and ``increaseAllowance`` calls and the native
value, so a cap holds whatever the model outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from nodeai.agents.spec import Budget, PolicySpec, SpendCap

Verdict = Literal["allow", "deny", "approve", "wait"]

# NOTE: ERC-20 functions that move or expose the sender's tokens; the amount is
# always their last uint256 argument.
TOKEN_SPENDING: dict[bytes, tuple[str, tuple[str, ...]]] = {
    function_signature_to_4byte_selector(sig): (sig, types)
    for sig, types in (
        ("transfer(address,uint256)", ("address", "uint256")),
        ("approve(address,uint256)", ("address", "uint256")),
        ("transferFrom(address,address,uint256)", ("address", "address", "uint256")),
        ("increaseAllowance(address,uint256)", ("address", "uint256")),
    )
}


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str
    """The policy field that decided (``policy.spend_caps[0].max_amount``), for the transcript."""
    reason: str
    retry_after_s: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"verdict": self.verdict, "rule": self.rule, "reason": self.reason}
        if self.verdict == "wait":
            out["retry_after_s"] = self.retry_after_s
        return out


ALLOW = Decision("allow", "policy", "allowed")


@dataclass(frozen=True)
class TxIntent:
    """A transaction the agent wants sent from its wallet."""

    chain_id: int
    to: str
    data: bytes = b""
    value: int = 0

    def selector(self) -> bytes:
        return self.data[:4]


@dataclass(frozen=True)
class Spend:
    chain_id: int
    token: str  # checksum address or "native"
    amount: int


class UndecodableCalldata(ValueError):
    pass


def selector(signature: str) -> bytes:
    return function_signature_to_4byte_selector(signature.replace(" ", ""))


def decode_spends(intent: TxIntent) -> list[Spend]:
    """What ``intent`` takes out of the sender's wallet, read from its calldata and value."""
    spends = []
    if intent.value:
        spends.append(Spend(intent.chain_id, "native", intent.value))
    known = TOKEN_SPENDING.get(intent.selector())
    if known is not None:
        sig, types = known
        try:
            args = abi_decode(list(types), intent.data[4:])
        except Exception as exc:  # NOTE: eth_abi raises several unrelated types for bad input
            raise UndecodableCalldata(f"calldata of {sig} does not decode: {exc}") from None
        spends.append(Spend(intent.chain_id, to_checksum_address(intent.to), int(args[-1])))
    return spends


def find_cap(policy: PolicySpec, chain_id: int, token: str) -> tuple[int, SpendCap] | None:
    for i, cap in enumerate(policy.spend_caps):
        if cap.chain_id == chain_id and cap.token == token:
            return i, cap
    return None


def check_transaction(policy: PolicySpec, intent: TxIntent, spent_in_window: Mapping[tuple[int, str], int],
                      *, approved: bool = False) -> Decision:
    """Judge a transaction: contract and function allow-lists, spend caps, approval threshold.

    ``spent_in_window[(chain_id, token)]`` is what the agent already spent in the
    window of that token's cap (``period_s`` seconds back from now). ``approved``
    says a human approved exactly this transaction.
    """
    to = to_checksum_address(intent.to)
    rules = [r for r in policy.contracts if r.chain_id == intent.chain_id and r.address == to]
    if not rules:
        return Decision("deny", "policy.contracts",
                        f"contract {to} on chain {intent.chain_id} is not in the allow-list")  # fmt: skip
    sel = intent.selector()
    functions = {f for r in rules for f in r.functions}
    if "*" not in functions:
        if len(intent.data) < 4:
            return Decision("deny", "policy.contracts", f"plain transfers to {to} are not allowed (only {sorted(functions)})")
        if sel not in {selector(f) for f in functions}:
            return Decision("deny", "policy.contracts",
                            f"function 0x{sel.hex()} of {to} is not allowed (allowed: {', '.join(sorted(functions))})")  # fmt: skip
    try:
        spends = decode_spends(intent)
    except UndecodableCalldata as exc:
        return Decision("deny", "policy.spend_caps", str(exc))
    needs_approval: list[str] = []
    for spend in spends:
        found = find_cap(policy, spend.chain_id, spend.token)
        if found is None:
            return Decision("deny", "policy.spend_caps",
                            f"no spend cap for {spend.token} on chain {spend.chain_id}: tokens without a cap cannot be spent")  # fmt: skip
        i, cap = found
        already = spent_in_window.get((spend.chain_id, spend.token), 0)
        if already + spend.amount > cap.max_amount:
            return Decision("deny", f"policy.spend_caps[{i}].max_amount",
                            f"spending {spend.amount} of {spend.token} would make {already + spend.amount} in "
                            f"{cap.period_s} s, above the cap of {cap.max_amount}")  # fmt: skip
        if cap.approval_above is not None and spend.amount > cap.approval_above:
            needs_approval.append(f"{spend.amount} of {spend.token} is above the approval threshold {cap.approval_above}"
                                  f" (policy.spend_caps[{i}].approval_above)")  # fmt: skip
    if needs_approval and not approved:
        return Decision("approve", "policy.spend_caps.approval_above", "; ".join(needs_approval))
    return ALLOW


def window_total(entries: Sequence[tuple[float, int]], now: float, period_s: float) -> int:
    """Sum of the amounts spent in the sliding window ``(now - period_s, now]``."""
    return sum(amount for at, amount in entries if now - period_s < at <= now)


# -- domains ----------------------------------------------------------------------------------
def host_allowed(domains: Sequence[str], host: str) -> bool:
    """``host`` is listed, or is a sub-domain of a ``*.example.com`` entry."""
    host = host.lower().rstrip(".").strip("[]")
    for entry in domains:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


def check_domain(policy: PolicySpec, host: str) -> Decision:
    if host_allowed(policy.domains, host):
        return ALLOW
    listed = ", ".join(policy.domains) or "none"
    return Decision("deny", "policy.domains", f"host {host!r} is not in the allowed domains ({listed})")


# -- rate limits -------------------------------------------------------------------------------
def check_rate(policy: PolicySpec, tool: str, function: str, recent: Mapping[str, Sequence[float]], now: float) -> Decision:
    """``recent[key]`` holds the start times of earlier calls for ``key`` in ``(tool, tool.function)``."""
    for key in (tool, f"{tool}.{function}"):
        limit = policy.rate_limits.get(key)
        if limit is None:
            continue
        window = sorted(t for t in recent.get(key, ()) if now - limit.per_s < t <= now)
        if len(window) >= limit.calls:
            wait = window[len(window) - limit.calls] + limit.per_s - now
            return Decision("wait", f"policy.rate_limits.{key}",
                            f"{len(window)} calls in the last {limit.per_s:g} s (limit {limit.calls})", max(wait, 0.0))  # fmt: skip
    return ALLOW


# -- budget ------------------------------------------------------------------------------------
def cost_units(tokens: int, price_per_1k_tokens: int) -> int:
    """Payment units for ``tokens`` model tokens, rounded up (a provider never bills a fraction)."""
    return math.ceil(tokens * price_per_1k_tokens / 1000) if price_per_1k_tokens else 0


def check_budget(budget: Budget, total_tokens: int, price_per_1k_tokens: int) -> Decision:
    """Whether a job that used ``total_tokens`` may make another model call."""
    if budget.model_tokens is not None and total_tokens >= budget.model_tokens:
        return Decision("deny", "policy.budget.model_tokens",
                        f"used {total_tokens} model tokens of a budget of {budget.model_tokens}")  # fmt: skip
    cost = cost_units(total_tokens, price_per_1k_tokens)
    if budget.payment_units is not None and cost >= budget.payment_units:
        return Decision("deny", "policy.budget.payment_units",
                        f"model use cost {cost} payment units of a budget of {budget.payment_units}")  # fmt: skip
    return ALLOW
