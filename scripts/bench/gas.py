"""Gas report: what each protocol step costs on a real anvil chain.

Every figure is a real transaction's ``gasUsed`` from its receipt (21,000
intrinsic gas and calldata included). Job steps are measured on a steady
state: the first job of a fresh deployment pays one-off costs (first
non-zero storage slots, recipients' first token balances); the figures
below come from the second job between the same parties, and the first
job's total is reported too.

Last line: one JSON object with job_lifecycle_gas (create + claim + submit +
finalize) and inference_gas_per_request_n100 / _n1000 (one deposit, one
voucher redemption and one receipt-root commit amortised over N requests).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eth_account import Account  # noqa: E402
from web3 import Web3  # noqa: E402

from nodeai.chain.anvil import ANVIL_KEYS, Anvil  # noqa: E402
from nodeai.chain.deploy import DeployParams, deploy_suite  # noqa: E402
from nodeai.chain.marketplace import Marketplace, synthetic_receipts  # noqa: E402

ONE = 10**6
ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
RITUAL_CREATE_DELIVER_GAS = 352_544  # Ritual Infernet's own gas snapshot, no escrow


def lifecycle(m: Marketplace, model_id: int) -> dict[str, int]:
    job_id, create = m.create_job(model_id, b"input", 10 * ONE)
    claim = m.claim(job_id)
    submit = m.submit(job_id, b"output", usage=1_000, charge=4 * ONE)
    m.advance_time(m.jobs[job_id].challenge_window)
    finalize = m.finalize(job_id)
    return {"create": create.gas_used, "claim": claim.gas_used, "submit": submit.gas_used, "finalize": finalize.gas_used}


def dispute_path(m: Marketplace, model_id: int, provider_wins: bool) -> dict[str, int]:
    job_id, _ = m.create_job(model_id, b"input", 10 * ONE)
    m.claim(job_id)
    m.submit(job_id, b"output", usage=1_000, charge=4 * ONE)
    dispute = m.dispute(job_id, b"evidence")
    resolve = m.resolve(job_id, provider_wins)
    return {"dispute": dispute.gas_used, "resolve": resolve.gas_used}


def measure(rpc_url: str) -> dict:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    keys = dict(zip(ROLES, ANVIL_KEYS))
    deployer = Account.from_key(keys["deployer"])
    params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
    m = Marketplace.from_keys(w3, deploy_suite(w3, deployer, params), keys)
    model_id = m.onboard(funds=100_000 * ONE, stake=1_000 * ONE)
    _, register_model = m.register_model(b"another model", b"manifest", 2_000, 1_000)

    first = lifecycle(m, model_id)
    steady = lifecycle(m, model_id)
    lost = dispute_path(m, model_id, provider_wins=False)
    won = dispute_path(m, model_id, provider_wins=True)

    m.deposit(1 * ONE)  # opens the channel: the first deposit pays for new storage
    deposit = m.deposit(50 * ONE).gas_used
    voucher, signature = m.sign(model_id, cumulative=1 * ONE)
    m.redeem(voucher, signature)
    voucher, signature = m.sign(model_id, cumulative=3 * ONE)
    redeem = m.redeem(voucher, signature).gas_used
    redeem_retry = m.redeem(voucher, signature).gas_used
    _, commit = m.commit_receipts(synthetic_receipts(m, model_id, 1_000, 20_000))
    per_batch = deposit + redeem + commit.gas_used
    return {
        "steps": {
            "registerModel": register_model.gas_used,
            **{f"job {k} (first job)": v for k, v in first.items()},
            **{f"job {k}": v for k, v in steady.items()},
            "disputeJob": lost["dispute"],
            "resolveDispute (provider loses, slashed)": lost["resolve"],
            "resolveDispute (provider wins, paid)": won["resolve"],
            "escrow deposit (top-up)": deposit,
            "redeem voucher": redeem,
            "redeem voucher again (idempotent no-op)": redeem_retry,
            "commitReceipts (1,000 receipts)": commit.gas_used,
        },
        "job_lifecycle_gas": sum(steady.values()),
        "job_lifecycle_gas_first_job": sum(first.values()),
        "job_lifecycle_vs_ritual_create_deliver": round(sum(steady.values()) / RITUAL_CREATE_DELIVER_GAS, 3),
        "inference_gas_per_batch": per_batch,
        "inference_gas_per_request_n100": round(per_batch / 100, 1),
        "inference_gas_per_request_n1000": round(per_batch / 1000, 1),
    }


def main() -> int:
    with Anvil() as anvil:
        report = measure(anvil.url)
    width = max(len(k) for k in report["steps"])
    print(f"{'step':<{width}}  {'gas':>9}")
    for step, gas in report["steps"].items():
        print(f"{step:<{width}}  {gas:>9,}")
    print(f"{'job lifecycle (create+claim+submit+finalize)':<{width}}  {report['job_lifecycle_gas']:>9,}")
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
