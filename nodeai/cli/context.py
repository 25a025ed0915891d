"""The object every command receives: settings, and the chain, wallet, indexer and IPFS made on demand.

Nothing is connected before a command needs it, so ``--help`` and
read-only commands stay fast and work without a password or a node.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import click

from nodeai.cli import keys
from nodeai.cli.config import Settings
from nodeai.cli.errors import MissingComponent, NotLoggedIn, ServiceUnavailable, UserError
from nodeai.cli.indexer import IndexerClient
from nodeai.cli.output import format_amount, status
from nodeai.native_output import quiet_native_output

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.contract import Contract

    from nodeai.chain.client import TxResult
    from nodeai.chain.deployments import Deployment

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliContext:
    home: Path
    settings: Settings
    json: bool = False
    debug: bool = False
    password_file: Path | None = None
    _w3: "Web3 | None" = field(default=None, repr=False)
    _deployment: "Deployment | None" = field(default=None, repr=False)
    _account: "LocalAccount | None" = field(default=None, repr=False)
    _token_meta: tuple[int, str] | None = field(default=None, repr=False)
    _indexer: IndexerClient | None = field(default=None, repr=False)

    # -- chain ----------------------------------------------------------------------------------
    @property
    def w3(self) -> "Web3":
        if self._w3 is None:
            from web3 import Web3

            w3 = Web3(Web3.HTTPProvider(self.settings.rpc_url, request_kwargs={"timeout": 30}))
            actual = self.rpc_chain_id(w3)
            if self.settings.chain_id is not None and actual != self.settings.chain_id:
                raise UserError(f"{self.settings.rpc_url} serves chain id {actual}, not {self.settings.chain_id} as configured",
                                "pass the right --rpc-url, or --chain-id to change networks (`nodeai login` saves it)")
            self._w3 = w3
        return self._w3

    def rpc_chain_id(self, w3: "Web3") -> int:
        import requests

        try:
            return w3.eth.chain_id
        except (requests.RequestException, OSError) as exc:
            raise ServiceUnavailable(f"cannot reach the chain at {self.settings.rpc_url} ({type(exc).__name__})",
                                     "start the node (e.g. `anvil`), or pass --rpc-url / NODEAI_RPC_URL") from None

    @property
    def deployment(self) -> "Deployment":
        if self._deployment is None:
            import json

            from nodeai.chain.deployments import Deployment

            chain_id = self.w3.eth.chain_id
            if self.settings.deployments:
                path = Path(self.settings.deployments).expanduser()
                if not path.is_file():
                    raise UserError(f"no deployments file at {path}",
                                    "deploy the contracts (`nodeai-deploy --rpc-url URL`) or pass --deployments FILE")
                try:
                    deployment = Deployment(**json.loads(path.read_text()))
                except (ValueError, TypeError) as exc:
                    raise UserError(f"{path} is not a deployments file: {exc}") from None
            else:
                try:
                    deployment = Deployment.load(chain_id)
                except FileNotFoundError as exc:
                    raise UserError(str(exc), "or pass --deployments FILE / NODEAI_DEPLOYMENTS") from None
            if deployment.chain_id != chain_id:
                raise UserError(f"the deployments file is for chain id {deployment.chain_id}, the RPC serves {chain_id}",
                                "pass the deployments file of this network with --deployments, or another --rpc-url")
            self._deployment = deployment
        return self._deployment

    def contract(self, name: str) -> "Contract":
        if name not in self.deployment.contracts:
            raise UserError(f"the deployments file has no {name} contract", "redeploy the suite with `nodeai-deploy`")
        return self.deployment.contract(self.w3, name)

    @property
    def token(self) -> "Contract":
        from nodeai.chain.deployments import token_name

        return self.contract(token_name(self.deployment))

    @property
    def decimals(self) -> int:
        return self._token()[0]

    @property
    def symbol(self) -> str:
        return self._token()[1]

    def _token(self) -> tuple[int, str]:
        if self._token_meta is None:
            token = self.token
            self._token_meta = (token.functions.decimals().call(), token.functions.symbol().call())
        return self._token_meta

    def fmt(self, amount: int) -> str:
        return format_amount(amount, self.decimals, self.symbol)

    def now(self) -> int:
        """The chain's clock (latest block timestamp), which is what deadlines and timelocks compare with."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    # -- wallet ---------------------------------------------------------------------------------
    @property
    def keystore_path(self) -> Path:
        return self.settings.keystore_path(self.home)

    @property
    def address(self) -> str:
        """The wallet's address, without asking for the password."""
        if self._account is not None:
            return self._account.address
        return keys.keystore_address(self.keystore_path)

    def account(self) -> "LocalAccount":
        if self._account is None:
            path = self.keystore_path
            if not path.is_file():
                raise NotLoggedIn(str(path))
            password = keys.resolve_password(self.password_file, confirm=False, purpose=f"for {path}")
            self._account = keys.unlock(path, password)
        return self._account

    def send(self, fn: Any, label: str) -> "TxResult":
        """Dry-run (eth_call), sign with the wallet, send, wait; one status line per transaction."""
        from nodeai.chain.client import Transactor

        account = self.account()
        status(f"  sending {label} ...")
        result = Transactor(self.w3, account).send(fn, label)
        status(f"  {label}: tx {result.tx_hash} in block {result.block_number} (gas {result.gas_used:,})")
        return result

    def ensure_allowance(self, spender: "Contract", amount: int) -> "TxResult | None":
        """Check the wallet holds ``amount``; approve ``spender`` for it when the allowance is smaller (no unlimited approvals)."""
        owner = self.account().address
        balance = self.token.functions.balanceOf(owner).call()
        if balance < amount:
            raise UserError(f"the wallet {owner} holds {self.fmt(balance)}, {self.fmt(amount)} is needed",
                            f"fund it with {self.symbol} first")
        current = self.token.functions.allowance(owner, spender.address).call()
        if current >= amount:
            return None
        return self.send(self.token.functions.approve(spender.address, amount), f"approve {self.fmt(amount)}")

    # -- indexer and IPFS -----------------------------------------------------------------------
    @property
    def indexer(self) -> IndexerClient:
        if self._indexer is None:
            self._indexer = IndexerClient(self.settings.indexer_url)
        return self._indexer

    @contextmanager
    def ipfs(self) -> Iterator[Any]:
        """The artifact store: the kubo RPC API in the settings, else the embedded node in $NODEAI_HOME/ipfs."""
        try:
            from nodeai import ipfs
        except ImportError:
            raise MissingComponent("nodeai.ipfs", "pinning to IPFS") from None
        peers = self.settings.ipfs_peer_list()
        if self.settings.ipfs_api:
            if peers:
                status(f"  warning: --ipfs-peers / NODEAI_IPFS_PEERS is ignored with --ipfs-api: the kubo node at "
                       f"{self.settings.ipfs_api} dials its own peers (`ipfs swarm connect` there)")
            store = ipfs.KuboRpcStore(self.settings.ipfs_api)
        else:
            for addr in peers:
                if "/p2p/" not in addr:
                    status(f"  warning: the IPFS peer {addr} lacks /p2p/PEER_ID: it is dialled as a bootstrap address "
                           "but this command cannot check that it connected; give the full multiaddr")
            status(f"  starting the embedded IPFS node ({self.home / 'ipfs'}) ...")
            with quiet_native_output():
                store = ipfs.EmbeddedKuboStore(self.home / "ipfs", bootstrap=peers)
        try:
            if not self.settings.ipfs_api:
                # NOTE: the embedded node lives only as long as the command: what it pins reaches a
                # provider only over a connection made now, so a peer that is not connected is worth a line.
                _await_peers(store, peers)
            yield store
        finally:
            close = getattr(store, "close", None)
            if callable(close):
                close()

    def close(self) -> None:
        if self._indexer is not None:
            self._indexer.close()


def _await_peers(store: Any, peers: list[str], timeout: float = 5.0) -> None:
    """Wait until the store is connected to every peer in ``peers`` (redialling), else say which one is not."""
    import time

    from nodeai.errors import NodeAIError

    wanted = {addr.rsplit("/p2p/", 1)[-1]: addr for addr in peers if "/p2p/" in addr}
    deadline = time.monotonic() + timeout
    while wanted:
        connected = set(store.peers())
        missing = {peer: addr for peer, addr in wanted.items() if peer not in connected}
        if not missing:
            return
        if time.monotonic() > deadline:
            status(f"  warning: the IPFS node is not connected to {', '.join(missing.values())}; "
                   "check --ipfs-peers / NODEAI_IPFS_PEERS (the peer must be running)")
            return
        for addr in missing.values():
            try:
                store.connect(addr)
            except (NodeAIError, ValueError):
                pass  # NOTE: retried until the deadline; kubo may still be dialling it itself
        time.sleep(0.1)


pass_ctx = click.make_pass_decorator(CliContext)


def _set_password_file(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(CliContext).password_file = value  # type: ignore[union-attr]


def signer_options(fn: F) -> F:
    """Options of every command that signs (``--json`` and the other global options come from ``global_options``)."""
    return click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False), expose_value=False,
                        callback=_set_password_file,
                        help="Read the keystore password from this file (else $NODEAI_PASSWORD, else a hidden prompt).")(fn)  # fmt: skip


def example(text: str) -> Callable[[F], F]:
    """Append an ``Example`` section to a command's help (click keeps the block verbatim after \\b)."""

    def decorate(fn: F) -> F:
        doc = inspect.cleandoc(fn.__doc__ or "")
        lines = "\n".join(f"  {line}" for line in text.strip().splitlines())
        fn.__doc__ = f"{doc}\n\n\b\nExample:\n{lines}\n"
        return fn

    return decorate
