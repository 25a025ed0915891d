"""EVM tool: balances and view calls over JSON-RPC; transfers and contract calls through the signer.

Reads go straight to the RPC. Writes only build a `TxIntent` (target, calldata,
value) and hand it to ``ctx.signer``, the policy-gated signer: it checks the
allow-lists and caps on the calldata itself, asks for approval above the
threshold, and alone holds the key.

RPC trouble (connection refused, timeouts, HTTP 5xx, JSON-RPC server errors)
is a retryable `ToolFailure`; a revert or a bad argument is not.
"""

from __future__ import annotations

from typing import Annotated, Any

import requests
from eth_utils import is_address, to_checksum_address
from pydantic import Field
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception, Web3RPCError

from nodeai.agents.errors import ToolArgumentError, ToolFailure
from nodeai.agents.policy import TxIntent
from nodeai.agents.spec import EvmToolConfig
from nodeai.agents.tools import Tool, ToolContext, function

ERC20_ABI: list[dict[str, Any]] = [
    {"type": "function", "name": "balanceOf", "stateMutability": "view",
     "inputs": [{"name": "account", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "decimals", "stateMutability": "view", "inputs": [], "outputs": [{"name": "", "type": "uint8"}]},
    {"type": "function", "name": "symbol", "stateMutability": "view", "inputs": [], "outputs": [{"name": "", "type": "string"}]},
    {"type": "function", "name": "totalSupply", "stateMutability": "view", "inputs": [], "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "allowance", "stateMutability": "view",
     "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
     "outputs": [{"name": "", "type": "uint256"}]},
    {"type": "function", "name": "transfer", "stateMutability": "nonpayable",
     "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
    {"type": "function", "name": "approve", "stateMutability": "nonpayable",
     "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
     "outputs": [{"name": "", "type": "bool"}]},
]  # fmt: skip

# NOTE: JSON-RPC error codes worth a retry: -32603 internal error (JSON-RPC 2.0 spec), -32000
# generic server error and -32005 limit exceeded (EIP-1474, used by geth and hosted RPCs for
# rate limiting), 429 from providers that answer in HTTP terms.
RETRYABLE_RPC_CODES = frozenset({-32603, -32000, -32005, 429})

Amount = Annotated[int, Field(ge=0, lt=2**256)]


def connect(rpc_url: str, timeout_s: float = 10.0) -> Web3:
    """A Web3 for ``rpc_url`` without web3's own retries: the worker loop retries, and records each try."""
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None))


class EvmTool(Tool):
    """Balances, view calls and (through the policy-gated signer) transactions on one EVM chain."""

    name = "evm"

    def __init__(self, config: EvmToolConfig, w3: Web3):
        self.config = config
        self._tool_name = config.name
        self.w3 = w3
        self._chain_checked = False

    # -- reads --------------------------------------------------------------------------------
    @function("Native coin balance (wei) of an account")
    def native_balance(self, ctx: ToolContext, account: str) -> dict[str, Any]:
        address = self._address(account, "account")
        return {"account": address, "wei": self._rpc("native_balance", lambda: self.w3.eth.get_balance(address))}

    @function("ERC-20 token balance (smallest units) of an account")
    def erc20_balance(self, ctx: ToolContext, token: str, account: str) -> dict[str, Any]:
        contract = self.w3.eth.contract(address=self._address(token, "token"), abi=ERC20_ABI)
        holder = self._address(account, "account")
        balance = self._rpc("erc20_balance", lambda: contract.functions.balanceOf(holder).call())
        decimals = self._rpc("erc20_balance", lambda: contract.functions.decimals().call())
        return {"token": contract.address, "account": holder, "balance": balance, "decimals": decimals}

    @function("eth_call of a view function: contract alias or address, function name or signature, arguments")
    def call(self, ctx: ToolContext, contract: str, function: str, args: list[Any] = [],  # noqa: B006
             abi: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        bound = self._function(contract, function, args, abi)
        return {"result": self._rpc("call", lambda: bound.call())}

    # -- writes (through the signer) ------------------------------------------------------------
    @function("Transfer ERC-20 tokens from the agent's wallet (policy-gated)", effect="write")
    def erc20_transfer(self, ctx: ToolContext, token: str, to: str, amount: Amount) -> dict[str, Any]:
        contract = self.w3.eth.contract(address=self._address(token, "token"), abi=ERC20_ABI)
        data = contract.encode_abi("transfer", [self._address(to, "to"), amount])
        return self._send(ctx, TxIntent(self.config.chain_id, contract.address, bytes.fromhex(data[2:]), 0))

    @function("Send a transaction calling a contract function (policy-gated)", effect="write")
    def transact(self, ctx: ToolContext, contract: str, function: str, args: list[Any] = [],  # noqa: B006
                 value: Amount = 0, abi: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        bound = self._function(contract, function, args, abi)
        data = bound._encode_transaction_data()
        return self._send(ctx, TxIntent(self.config.chain_id, bound.address, bytes.fromhex(data[2:]), value))

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, ctx: ToolContext, intent: TxIntent) -> dict[str, Any]:
        if ctx.signer is None:
            raise ToolFailure(f"{self.tool_name}.transact",
                              "this runtime has no signer: the provider must configure the agent wallet to send transactions")  # fmt: skip
        self._check_chain()
        return ctx.signer.send(intent, ctx)

    def _address(self, value: str, what: str) -> str:
        if value in self.config.contracts:
            return self.config.contracts[value].address
        if not isinstance(value, str) or not is_address(value):
            aliases = ", ".join(self.config.contracts) or "none configured"
            raise ToolArgumentError(self.tool_name, f"{what} {value!r} is neither an address nor a contract alias ({aliases})")
        return to_checksum_address(value)

    def _function(self, contract: str, function: str, args: list[Any], abi: list[dict[str, Any]] | None):
        address = self._address(contract, "contract")
        if abi is None:
            configured = self.config.contracts.get(contract)
            abi = ERC20_ABI if configured is None or configured.abi == "erc20" else configured.abi
        target = self.w3.eth.contract(address=address, abi=abi)
        try:
            if "(" in function:
                return target.get_function_by_signature(function.replace(" ", ""))(*args)
            return target.functions[function](*args)
        except (ValueError, TypeError, Web3Exception) as exc:
            raise ToolArgumentError(self.tool_name, f"cannot call {function} on {address}: {exc}") from None

    def _check_chain(self) -> None:
        if self._chain_checked:
            return
        actual = self._rpc("chain_id", lambda: self.w3.eth.chain_id)
        if actual != self.config.chain_id:
            raise ToolFailure(self.tool_name, f"the RPC serves chain {actual}, the spec's tool wants chain {self.config.chain_id}")
        self._chain_checked = True

    def _rpc(self, what: str, call: Any) -> Any:
        if what != "chain_id":
            self._check_chain()
        try:
            return call()
        except ContractLogicError as exc:
            raise ToolFailure(f"{self.tool_name}.{what}", f"reverted: {exc}") from None
        except Web3RPCError as exc:
            code = (exc.rpc_response or {}).get("error", {}).get("code") if isinstance(exc.rpc_response, dict) else None
            raise ToolFailure(f"{self.tool_name}.{what}", f"RPC error {code}: {exc}", retryable=code in RETRYABLE_RPC_CODES) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ToolFailure(f"{self.tool_name}.{what}", f"RPC unreachable: {type(exc).__name__}: {exc}", retryable=True) from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise ToolFailure(f"{self.tool_name}.{what}", f"RPC answered HTTP {status}", retryable=status >= 500 or status == 429) from None
