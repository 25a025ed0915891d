"""``nodeai receipts verify``: prove that a request was metered as billed.

The gateway signs a receipt for every request; providers commit batches of
receipts on chain as Merkle roots (``ReceiptRegistry``). Given a receipt
and its inclusion proof, this command recomputes the leaf and the path to
the root locally, then asks the contract whether that root was committed by
the receipt's own provider and whether the receipt is in it.

Input (a file or ``-`` for stdin): what the gateway's
``GET /v1/nodeai/receipts/{request_hash}`` answers::

    {"receipt": {"requestHash": "0x..", "provider": "0x..", "payer": "0x..", "modelId": 1, "tokensIn": 20,
                 "tokensOut": 40, "latencyMs": 120, "amount": "2000", "timestamp": 1700000000,
                 "chainId": 31337, "registry": "0x..", "signature": "0x.."},
     "root": "0x..", "proof": ["0x..", ...]}

snake_case keys are accepted too. When the receipt carries the provider's
EIP-712 signature, it is checked as well: a receipt is valid only when its
provider signed it and it is in a batch that provider committed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click
from eth_utils import is_address, to_checksum_address

from nodeai.chain.receipts import Receipt, verify_proof
from nodeai.cli.context import CliContext, example, json_option, pass_ctx
from nodeai.cli.errors import CheckFailed, EXIT_FAILURE, UserError
from nodeai.cli.output import emit

FIELDS = ("request_hash", "provider", "payer", "model_id", "tokens_in", "tokens_out", "latency_ms", "amount", "timestamp")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _bytes32(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        text = value.removeprefix("0x")
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise UserError(f"{what} must be 32 bytes as 0x-hex (64 hex digits), got {value!r}")


def parse_receipt(data: dict[str, Any]) -> Receipt:
    raw = {_snake(k): v for k, v in data.items()}
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise UserError(f"the receipt lacks {', '.join(missing)}", "pass the receipt exactly as the gateway returned it")
    for name in ("provider", "payer"):
        if not isinstance(raw[name], str) or not is_address(raw[name]):
            raise UserError(f"receipt field {name} is not an address: {raw[name]!r}")
    numbers = {}
    for name in ("model_id", "tokens_in", "tokens_out", "latency_ms", "amount", "timestamp"):
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise UserError(f"receipt field {name} must be a non-negative integer, got {value!r}")
        numbers[name] = int(value)
    return Receipt(request_hash=_bytes32(raw["request_hash"], "receipt field request_hash"),
                   provider=to_checksum_address(raw["provider"]), payer=to_checksum_address(raw["payer"]), **numbers)  # fmt: skip


@click.group("receipts")
@example("""
nodeai receipts verify receipt.json
""")
def receipts() -> None:
    """Per-request receipts: check that a request is in a batch committed on chain."""


@receipts.command("verify")
@click.argument("receipt_file", type=click.File("r"))
@click.option("--root", help="Merkle root to check against (default: the file's root).")
@click.option("--proof", "proof_items", multiple=True, help="A sibling hash of the proof, leaf first (repeat; default: the file's proof).")
@json_option
@pass_ctx
@example("""
nodeai receipts verify receipt.json
curl -s .../receipts/0xabc... | nodeai receipts verify - --json
""")
def verify(obj: CliContext, receipt_file: Any, root: str | None, proof_items: tuple[str, ...]) -> None:
    """Verify a receipt's Merkle inclusion against the root its provider committed on chain.

    Exit code 0 when the receipt is in a committed batch, 1 when it is not
    (altered receipt, wrong proof, or a batch not committed yet), 2 when the
    file cannot be read as a receipt.
    """
    try:
        document = json.load(receipt_file)
    except json.JSONDecodeError as exc:
        raise UserError(f"{receipt_file.name} is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("receipt"), dict):
        raise UserError(f"{receipt_file.name} has no \"receipt\" object", "see `nodeai receipts verify --help` for the format")
    receipt = parse_receipt(document["receipt"])
    root_value = root or document.get("root")
    if root_value is None:
        raise UserError("no Merkle root given", "pass --root 0x... or put \"root\" in the file")
    root_bytes = _bytes32(root_value, "root")
    proof_source = list(proof_items) if proof_items else document.get("proof", [])
    if not isinstance(proof_source, list):
        raise UserError("\"proof\" must be a list of 0x-hex hashes")
    proof = [_bytes32(p, f"proof item {i}") for i, p in enumerate(proof_source)]

    signature_valid = _check_signature(obj, document["receipt"])
    leaf = receipt.leaf()
    locally = verify_proof(proof, root_bytes, leaf)
    registry = obj.contract("ReceiptRegistry")
    committed = registry.functions.isCommitted(receipt.provider, root_bytes).call()
    on_chain = registry.functions.verifyReceipt(root_bytes, receipt.as_tuple(), proof).call()
    data = {"valid": bool(on_chain) and signature_valid is not False, "signature_valid": signature_valid, "leaf": "0x" + leaf.hex(), "root": "0x" + root_bytes.hex(),
            "proof_matches_root": locally, "root_committed": committed, "provider": receipt.provider,
            "payer": receipt.payer, "model_id": receipt.model_id, "amount": receipt.amount,
            "tokens_in": receipt.tokens_in, "tokens_out": receipt.tokens_out}  # fmt: skip
    if data["valid"]:
        emit(obj.json, data, f"valid: the receipt ({obj.fmt(receipt.amount)} for {receipt.tokens_in}+{receipt.tokens_out} tokens, "
             f"model {receipt.model_id}) is in the batch {data['root']} committed on chain by {receipt.provider}")  # fmt: skip
        return
    if signature_valid is False:
        message = f"the receipt is not signed by its provider {receipt.provider}: it was altered or forged"
        hint = "use the receipt exactly as the gateway returned it"
    elif not committed:
        message = f"root {data['root']} was not committed on chain by the receipt's provider {receipt.provider}"
        hint = "providers commit receipts in batches: retry later, or check the root you were given"
    else:
        message = "the receipt is NOT in the committed batch: the receipt or its proof was altered"
        hint = "compare it with the copy the gateway returned; dispute the charge if the provider billed something else"
    data["reason"] = message
    if obj.json:
        emit(True, data, "")
        raise click.exceptions.Exit(EXIT_FAILURE)
    raise CheckFailed(message, hint)


def _check_signature(obj: CliContext, raw: dict[str, Any]) -> bool | None:
    """The provider's EIP-712 signature checked (None when the receipt carries none)."""
    if "signature" not in raw:
        return None
    from nodeai.serving.receipts import receipt_from_json, verify_receipt_signature

    camel = {_camel(k): v for k, v in raw.items()}
    try:
        signed = receipt_from_json(camel)
    except ValueError as exc:
        raise UserError(f"the receipt cannot be read: {exc}", "pass the receipt exactly as the gateway returned it") from None
    registry = obj.contract("ReceiptRegistry").address
    if signed.chain_id != obj.deployment.chain_id or signed.registry.lower() != registry.lower():
        raise UserError(f"the receipt was signed for chain {signed.chain_id} and registry {signed.registry}, "
                        f"this network is chain {obj.deployment.chain_id} with registry {registry}",
                        "verify it against its own network (--rpc-url, --deployments)")  # fmt: skip
    return verify_receipt_signature(signed)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
