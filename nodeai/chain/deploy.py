"""Deploy the NodeAI contract suite and write the deployments file.

The deployments file (``deployments/<chain id>.json``) is what frontends, the
indexer and provider daemons load: every contract's address, ABI and deploy
block, plus the parameters it was deployed with.

Command line::

    python scripts/deploy.py --rpc-url http://127.0.0.1:8545

On a local chain (chain id 31337) it deploys a test token too and signs with
anvil's first account; anywhere else pass ``--token`` (e.g. USDC) and a key
through ``--keystore`` (an encrypted JSON keystore) with its password in
``NODEAI_KEYSTORE_PASSWORD``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, LOCAL_CHAIN_ID
from nodeai.chain.artifacts import REPO_ROOT, load_artifact
from nodeai.chain.deployments import DEPLOYMENTS_DIR, Deployment, token_name  # noqa: F401  (re-exported)
from nodeai.errors import NodeAIError



@dataclass(frozen=True)
class DeployParams:
    """Governance parameters of a deployment (all amounts in token units)."""

    treasury: str
    arbiter: str
    protocol_fee_bps: int = 250
    min_stake: int = 100 * 10**6
    unbonding_delay: int = 7 * 86_400
    challenge_window: int = 3_600
    arbitration_window: int = 86_400
    bond_bps: int = 2_000
    withdraw_timelock: int = 86_400


def deploy_suite(w3: Web3, deployer: LocalAccount, params: DeployParams, token: str | None = None,
                 log=lambda message: None) -> Deployment:
    """Deploy every contract (and a test token when ``token`` is None), wire them, return the deployment."""
    from nodeai.chain.client import Transactor

    sender = Transactor(w3, deployer)
    deployment = Deployment(
        chain_id=w3.eth.chain_id, deploy_block=w3.eth.block_number + 1, deployer=deployer.address,
        params=asdict(params) | {"token": token},
    )  # fmt: skip

    def deploy(name: str, *args) -> str:
        artifact = load_artifact(name)
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        tx = factory.constructor(*args).build_transaction({
            "from": deployer.address,
            "nonce": w3.eth.get_transaction_count(deployer.address, "pending"),
            "chainId": deployment.chain_id,
        })
        receipt = w3.eth.wait_for_transaction_receipt(
            w3.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction), timeout=120
        )
        if receipt["status"] != 1 or not receipt["contractAddress"]:
            raise NodeAIError(f"deploying {name} failed in transaction {receipt['transactionHash'].hex()}")
        deployment.contracts[name] = {
            "address": receipt["contractAddress"], "abi": artifact.abi, "block": receipt["blockNumber"],
        }  # fmt: skip
        log(f"deployed {name:<17} at {receipt['contractAddress']}  (block {receipt['blockNumber']}, gas {receipt['gasUsed']:,})")
        return receipt["contractAddress"]

    if token is None:
        token = deploy("TestToken", "Test USD", "TUSD", 6)
    else:
        deployment.contracts["Token"] = {"address": Web3.to_checksum_address(token), "abi": load_artifact("TestToken").abi, "block": 0}
    models = deploy("ModelRegistry")
    providers = deploy("ProviderRegistry", token, models, params.min_stake, params.unbonding_delay)
    market = deploy(
        "JobMarket", token, models, providers, params.treasury, params.protocol_fee_bps, params.arbiter,
        params.challenge_window, params.arbitration_window, params.bond_bps,
    )  # fmt: skip
    deploy("InferenceEscrow", token, models, providers, params.treasury, params.protocol_fee_bps, params.withdraw_timelock)
    deploy("ReceiptRegistry", providers)
    sender.send(deployment.contract(w3, "ProviderRegistry").functions.setMarket(market, True), "authorize JobMarket")
    log("authorized JobMarket to bond and slash provider stake")
    deployment.params["token"] = token
    return deployment


def _load_key(args: argparse.Namespace, chain_id: int) -> LocalAccount:
    if args.keystore:
        password = os.environ.get("NODEAI_KEYSTORE_PASSWORD")
        if password is None:
            password = getpass.getpass(f"password for {args.keystore}: ")
        with open(args.keystore) as fh:
            return Account.from_key(Account.decrypt(json.load(fh), password))
    if chain_id != LOCAL_CHAIN_ID:
        raise NodeAIError(
            f"chain id {chain_id} is not a local chain: pass --keystore PATH (encrypted JSON keystore) "
            "with its password in NODEAI_KEYSTORE_PASSWORD"
        )
    return Account.from_key(ANVIL_KEYS[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deploy the NodeAI Hub contracts and write deployments/<chain id>.json.")
    parser.add_argument("--rpc-url", default="http://127.0.0.1:8545", help="JSON-RPC URL of the chain")
    parser.add_argument("--keystore", help="encrypted JSON keystore of the deployer (required off local chains)")
    parser.add_argument("--token", help="payment token address (e.g. USDC); omitted: deploy a test token")
    parser.add_argument("--treasury", help="treasury address (default: the deployer)")
    parser.add_argument("--arbiter", help="dispute arbiter address (default: the deployer)")
    parser.add_argument("--out", type=Path, default=DEPLOYMENTS_DIR, help="folder for the deployments file")
    args = parser.parse_args(argv)
    try:
        w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
        chain_id = w3.eth.chain_id
        deployer = _load_key(args, chain_id)
        params = DeployParams(treasury=args.treasury or deployer.address, arbiter=args.arbiter or deployer.address)
        deployment = deploy_suite(w3, deployer, params, token=args.token, log=print)
        print(f"wrote {deployment.save(args.out)}")
    except NodeAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot reach {args.rpc_url}: {exc}", file=sys.stderr)
        return 2
    return 0
