"""NodeAI Hub demo: the whole on-chain marketplace on a local anvil chain.

Starts anvil (or uses --rpc-url), deploys the contracts, then walks through
an agent job (escrow -> claim -> result -> challenge window -> settlement)
and pay-per-request inference (deposit -> signed vouchers -> one redemption
-> receipts committed as a Merkle root -> a receipt proven on chain),
printing every transaction's gas and the final balances.
"""

from __future__ import annotations

import argparse
import sys

from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil
from nodeai.chain.deploy import DeployParams, deploy_suite
from nodeai.chain.fees import split_payment
from nodeai.chain.marketplace import Marketplace, raw_cid, synthetic_receipts
from nodeai.errors import NodeAIError

ONE = 10**6  # the test token has 6 decimals, like USDC
ROLES = ("deployer", "treasury", "publisher", "provider", "requester")


def fmt(amount: int) -> str:
    return f"{amount / ONE:,.6f} TUSD"


def run(rpc_url: str) -> None:
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    keys = dict(zip(ROLES, ANVIL_KEYS))
    deployer = keys["deployer"]
    from eth_account import Account

    treasury = Account.from_key(keys["treasury"]).address
    print(f"== 1. deploy to chain {w3.eth.chain_id} at {rpc_url}")
    deployment = deploy_suite(w3, Account.from_key(deployer), DeployParams(treasury=treasury, arbiter=Account.from_key(deployer).address),
                              log=lambda m: print("   " + m))
    print(f"   deployments file: {deployment.save()}")
    m = Marketplace.from_keys(w3, deployment, keys)
    gas: list[tuple[str, int]] = []

    def step(result, note: str = "") -> None:
        gas.append((result.label, result.gas_used))
        print(f"   {result.label:<22} gas {result.gas_used:>8,}  tx {result.tx_hash[:18]}…  {note}")

    print("== 2. fund the provider and the requester with the test token")
    for who, amount in (("provider", 5_000 * ONE), ("requester", 1_000 * ONE)):
        step(m.mint(who, amount), f"{who} gets {fmt(amount)}")

    print("== 3. a publisher registers a model (artifact and manifest addressed by CID)")
    artifact, manifest = b"SmolLM2-135M-Instruct Q4_1 GGUF (demo bytes)", b'{"format":"gguf","context":2048}'
    model_id, result = m.register_model(artifact, manifest, price_per_1k=2_000, share_bps=1_000)
    step(result, f"model #{model_id}, artifact {raw_cid(artifact)[:20]}…, 10% revenue share")

    print("== 4. a provider stakes and serves the model")
    for result in m.register_provider("http://127.0.0.1:8000/v1", "12D3KooWDemoPeer", 1_000 * ONE, model_id, 2_000):
        step(result)

    print("== 5. an agent job through escrow")
    step(m.approve("requester", m.market))
    max_payment, charge = 10 * ONE, 4 * ONE
    job_id, result = m.create_job(model_id, b'{"task":"Rebalance to 60/40"}', max_payment)
    step(result, f"job #{job_id}: {fmt(max_payment)} locked in escrow")
    step(m.claim(job_id), f"bond {fmt(m.jobs[job_id].bond)} of the provider's stake")
    step(m.submit(job_id, b'{"result":"rebalanced","transcript_root":"0x.."}', usage=1_834, charge=charge),
         f"charge {fmt(charge)}, challenge window {m.jobs[job_id].challenge_window} s")
    m.advance_time(m.jobs[job_id].challenge_window)
    print(f"   (challenge window passes: +{m.jobs[job_id].challenge_window} s)")
    result = m.finalize(job_id)
    settled = result.event("JobSettled")
    step(result, "settled: receipt event JobSettled")
    print(f"   provider {fmt(settled['providerAmount'])} | model owner {fmt(settled['modelOwnerAmount'])} | "
          f"treasury {fmt(settled['protocolFee'])} | refund {fmt(settled['refund'])}")

    print("== 6. pay-per-request inference with signed vouchers")
    step(m.approve("requester", m.escrow))
    step(m.deposit(5 * ONE), f"{fmt(5 * ONE)} deposited for the provider")
    requests_served, price = 100, 20_000  # 0.02 TUSD a request
    voucher = signature = None
    for n in range(1, requests_served + 1):
        voucher, signature = m.sign(model_id, cumulative=n * price)  # one voucher per request, off chain
    print(f"   {requests_served} requests served, each with a new EIP-712 voucher (no transaction); last: {fmt(voucher.cumulative_amount)}")
    result = m.redeem(voucher, signature)
    redeemed = result.event("VoucherRedeemed")
    step(result, f"paid {fmt(redeemed['paid'])} in one transaction")
    retry = m.redeem(voucher, signature)
    step(retry, f"retry of the same voucher pays {fmt(retry.events.get('VoucherRedeemed', [{'paid': 0}])[0]['paid'])} (idempotent)")
    receipts = synthetic_receipts(m, model_id, requests_served, price)
    tree, result = m.commit_receipts(receipts)
    step(result, f"{len(receipts)} signed receipts committed as Merkle root {tree.root.hex()[:16]}…")
    print(f"   receipt #42 proven on chain: {m.verify_receipt(tree, receipts, 42)}")

    expected = split_payment(charge, 1_000, 250)
    print("== 7. final balances")
    for who in ("provider", "publisher", "treasury", "requester"):
        print(f"   {who:<10} {fmt(m.balance(who)):>22}")
    print(f"   escrow contracts hold: JobMarket {fmt(m.balance(m.market.address))}, "
          f"InferenceEscrow {fmt(m.balance(m.escrow.address))}")
    assert settled["providerAmount"] == expected.provider, "settlement split differs from the protocol's rule"
    show_indexer_view(rpc_url, deployment)
    print(f"== done: {len(gas)} transactions, {sum(g for _, g in gas):,} gas in all")
    print("   next: .venv/bin/python scripts/bench/gas.py for the gas report; README.md for the test suite")


def show_indexer_view(rpc_url: str, deployment) -> None:
    """What a dApp sees: the indexer rebuilds the marketplace from the chain's events alone."""
    import tempfile

    from nodeai.indexer.ingest import IngestConfig, Ingestor
    from nodeai.indexer.rpc import RpcPool
    from nodeai.indexer.store import open_store

    print("== 8. the indexer's view, rebuilt from events alone (SQLite)")
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{folder}/indexer.db")
        store.migrate()
        ingestor = Ingestor(RpcPool([rpc_url], deployment.chain_id), store, deployment, IngestConfig(confirmations=0))
        while ingestor.step():
            pass
        print(f"   {store.count_events(deployment.chain_id)} events indexed up to block {store.cursor(deployment.chain_id).height}")
        for kind in ("model", "provider", "job", "channel", "receipt_batch"):
            for entity in store.list_entities(deployment.chain_id, kind):
                doc = entity.doc
                summary = {
                    "model": lambda: f"v{doc['version']} {doc['artifact_cid'][:16]}… share {doc['revenue_share_bps']} bps",
                    "provider": lambda: f"stake {fmt(doc['stake'])}, {doc['jobs_completed']} job(s) completed",
                    "job": lambda: f"{doc['state']}, charge {fmt(doc['charge'])}, output {doc['output_cid'][:16]}…",
                    "channel": lambda: f"balance {fmt(doc['balance'])}, redeemed {fmt(doc['total_redeemed'])}",
                    "receipt_batch": lambda: f"{doc['count']} receipts, {fmt(doc['amount'])}",
                }[kind]()
                print(f"   {kind:<13} {entity.key[:24]:<24} {summary}")
        store.close()
    print("   serve it: .venv/bin/python -m nodeai.indexer --deployments deployments/31337.json --rpc-url URL")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc-url", help="use this chain (anvil-compatible) instead of starting anvil")
    args = parser.parse_args(argv)
    try:
        if args.rpc_url:
            run(args.rpc_url)
        else:
            with Anvil() as anvil:
                print(f"started anvil on {anvil.url} (pid {anvil.process.pid})")
                run(anvil.url)
            print("stopped anvil")
    except NodeAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
