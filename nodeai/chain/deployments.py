"""The deployments file: what frontends, the indexer and provider daemons load.

Kept free of web3 imports so that processes which only read it (the indexer)
start fast; web3 objects are made on demand by ``Deployment.contract``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeai.errors import ChainIdMismatch, DeploymentNotFound

if TYPE_CHECKING:
    from web3 import Web3

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS_DIR = REPO_ROOT / "deployments"


@dataclass
class Deployment:
    chain_id: int
    deploy_block: int
    deployer: str
    params: dict[str, Any]
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return self.contracts[name]["address"]

    def contract(self, w3: "Web3", name: str):
        """A web3 contract object for ``name`` (e.g. ``"JobMarket"``)."""
        entry = self.contracts[name]
        return w3.eth.contract(address=entry["address"], abi=entry["abi"])

    def save(self, directory: Path = DEPLOYMENTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.chain_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, chain_id: int, directory: Path = DEPLOYMENTS_DIR) -> "Deployment":
        path = directory / f"{chain_id}.json"
        if not path.is_file():
            raise DeploymentNotFound(str(path), chain_id)
        return cls(**json.loads(path.read_text()))

    def check_chain(self, w3: "Web3", rpc_url: str = "the RPC") -> None:
        actual = w3.eth.chain_id
        if actual != self.chain_id:
            raise ChainIdMismatch(self.chain_id, actual, rpc_url)


def token_name(deployment: Deployment) -> str:
    return "TestToken" if "TestToken" in deployment.contracts else "Token"
