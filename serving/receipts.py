"""Signed per-request receipts: what the provider attests it metered and charged.

Signature scheme (chosen: EIP-712)
----------------------------------
A receipt is signed as EIP-712 typed data of the ``ReceiptRegistry`` struct::

    Receipt(bytes32 requestHash,address provider,address payer,uint256 modelId,
            uint256 tokensIn,uint256 tokensOut,uint256 latencyMs,uint256 amount,uint256 timestamp)

on the domain ``{name: "NodeAI Receipts", version: "1", chainId, verifyingContract:
ReceiptRegistry address}``. EIP-712 rather than an EIP-191 signature of the
Merkle leaf because wallets can show the fields to a human, and because the
domain binds the receipt to one chain and registry, exactly as vouchers are
bound to one escrow. The Merkle leaf committed on chain is computed from the
same fields (``nodeai.chain.receipts.Receipt.leaf``), so one receipt both
verifies by signature now and by inclusion once its batch is committed.

``request_hash`` = keccak256(canonical JSON of the request body || response id),
canonical JSON being ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` in UTF-8: a client that kept its request body and got the
response id can recompute it (``request_hash``).

Wire form (header ``X-NodeAI-Receipt`` = base64url of this JSON; inside
``usage.nodeai_receipt`` as the object itself)::

    {"requestHash": "0x..", "provider": "0x..", "payer": "0x..", "modelId": 1, "tokensIn": 12,
     "tokensOut": 16, "latencyMs": 140, "amount": "56", "timestamp": 1767225600,
     "chainId": 31337, "registry": "0x..", "signature": "0x<65 bytes>"}

Signing uses coincurve over a digest hashed here directly (about 20 times
faster than eth_account's typed-data path); ``verify_receipt_signature`` uses
eth_account's independent EIP-712 encoder, and the tests check both agree.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Mapping

from coincurve import PrivateKey
from eth_account import Account
from eth_account.messages import encode_typed_data

from nodeai.chain.receipts import Receipt

from .eth_fast import checksum, keccak256
from .payments import eip712_domain_separator

__all__ = [
    "RECEIPT_HEADER",
    "RECEIPT_DOMAIN_NAME",
    "RECEIPT_DOMAIN_VERSION",
    "RECEIPT_TYPES",
    "SignedReceipt",
    "ReceiptSigner",
    "canonical_json",
    "request_hash",
    "receipt_digest",
    "receipt_to_json",
    "receipt_from_json",
    "encode_receipt_header",
    "decode_receipt_header",
    "verify_receipt_signature",
]

RECEIPT_HEADER = "X-NodeAI-Receipt"
RECEIPT_DOMAIN_NAME = "NodeAI Receipts"
RECEIPT_DOMAIN_VERSION = "1"
RECEIPT_TYPES = {
    "Receipt": [
        {"name": "requestHash", "type": "bytes32"},
        {"name": "provider", "type": "address"},
        {"name": "payer", "type": "address"},
        {"name": "modelId", "type": "uint256"},
        {"name": "tokensIn", "type": "uint256"},
        {"name": "tokensOut", "type": "uint256"},
        {"name": "latencyMs", "type": "uint256"},
        {"name": "amount", "type": "uint256"},
        {"name": "timestamp", "type": "uint256"},
    ]
}
_RECEIPT_TYPEHASH = keccak256(
    b"Receipt(bytes32 requestHash,address provider,address payer,uint256 modelId,uint256 tokensIn,"
    b"uint256 tokensOut,uint256 latencyMs,uint256 amount,uint256 timestamp)"
)


def canonical_json(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def request_hash(body: Any, response_id: str) -> bytes:
    """keccak256(canonical JSON of the request body || response id)."""
    return keccak256(canonical_json(body) + response_id.encode())


def _domain(chain_id: int, registry: str) -> dict[str, Any]:
    return {"name": RECEIPT_DOMAIN_NAME, "version": RECEIPT_DOMAIN_VERSION, "chainId": chain_id,
            "verifyingContract": checksum(registry)}


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def receipt_digest(receipt: Receipt, chain_id: int, registry: str) -> bytes:
    """The receipt's EIP-712 digest, hashed directly."""
    struct_hash = keccak256(
        _RECEIPT_TYPEHASH + receipt.request_hash + _address_word(receipt.provider) + _address_word(receipt.payer)
        + _word(receipt.model_id) + _word(receipt.tokens_in) + _word(receipt.tokens_out) + _word(receipt.latency_ms)
        + _word(receipt.amount) + _word(receipt.timestamp)
    )  # fmt: skip
    separator = eip712_domain_separator(RECEIPT_DOMAIN_NAME, RECEIPT_DOMAIN_VERSION, chain_id,
                                        checksum(registry))
    return keccak256(b"\x19\x01" + separator + struct_hash)


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    receipt: Receipt
    signature: bytes
    chain_id: int
    registry: str

    def to_json(self) -> dict[str, Any]:
        return receipt_to_json(self)


class ReceiptSigner:
    """Signs receipts with the provider's key for one chain and ReceiptRegistry."""

    def __init__(self, private_key: bytes | str, chain_id: int, registry: str):
        raw = bytes.fromhex(private_key.removeprefix("0x")) if isinstance(private_key, str) else bytes(private_key)
        self._key = PrivateKey(raw)
        self.address = checksum("0x" + keccak256(self._key.public_key.format(compressed=False)[1:])[-20:].hex())
        self.chain_id = chain_id
        self.registry = checksum(registry)

    def sign(self, receipt: Receipt) -> SignedReceipt:
        if receipt.provider.lower() != self.address.lower():
            raise ValueError(f"receipt names provider {receipt.provider}, but this signer is {self.address}")
        raw = self._key.sign_recoverable(receipt_digest(receipt, self.chain_id, self.registry), hasher=None)
        # NOTE: libsecp256k1 always produces low-s signatures; v = recovery id + 27 as Ethereum expects.
        return SignedReceipt(receipt, raw[:64] + bytes([raw[64] + 27]), self.chain_id, self.registry)


def receipt_to_json(signed: SignedReceipt) -> dict[str, Any]:
    r = signed.receipt
    return {
        "requestHash": "0x" + r.request_hash.hex(),
        "provider": checksum(r.provider),
        "payer": checksum(r.payer),
        "modelId": r.model_id,
        "tokensIn": r.tokens_in,
        "tokensOut": r.tokens_out,
        "latencyMs": r.latency_ms,
        "amount": str(r.amount),
        "timestamp": r.timestamp,
        "chainId": signed.chain_id,
        "registry": signed.registry,
        "signature": "0x" + signed.signature.hex(),
    }


def receipt_from_json(data: Mapping[str, Any]) -> SignedReceipt:
    """Parse the wire form; ``ValueError`` says which field is wrong."""
    try:
        receipt = Receipt(
            request_hash=bytes.fromhex(str(data["requestHash"]).removeprefix("0x")),
            provider=checksum(data["provider"]), payer=checksum(data["payer"]),
            model_id=int(data["modelId"]), tokens_in=int(data["tokensIn"]), tokens_out=int(data["tokensOut"]),
            latency_ms=int(data["latencyMs"]), amount=int(data["amount"]), timestamp=int(data["timestamp"]),
        )  # fmt: skip
        signature = bytes.fromhex(str(data["signature"]).removeprefix("0x"))
        chain_id, registry = int(data["chainId"]), checksum(data["registry"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a NodeAI receipt ({type(exc).__name__}: {exc})") from None
    if len(receipt.request_hash) != 32 or len(signature) != 65:
        raise ValueError("not a NodeAI receipt: requestHash must be 32 bytes and signature 65 bytes")
    return SignedReceipt(receipt, signature, chain_id, registry)


def encode_receipt_header(signed: SignedReceipt | Mapping[str, Any]) -> str:
    """The ``X-NodeAI-Receipt`` value (from the receipt or its wire form, if already made)."""
    data = receipt_to_json(signed) if isinstance(signed, SignedReceipt) else signed
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def decode_receipt_header(value: str) -> SignedReceipt:
    return receipt_from_json(json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))))


def verify_receipt_signature(signed: SignedReceipt, provider: str | None = None) -> bool:
    """True when the receipt was signed by its provider (and that is ``provider``, when given).

    Uses eth_account's EIP-712 encoder, independent of the signing path.
    """
    r = signed.receipt
    message = {
        "requestHash": r.request_hash, "provider": checksum(r.provider),
        "payer": checksum(r.payer), "modelId": r.model_id, "tokensIn": r.tokens_in,
        "tokensOut": r.tokens_out, "latencyMs": r.latency_ms, "amount": r.amount, "timestamp": r.timestamp,
    }  # fmt: skip
    signable = encode_typed_data(_domain(signed.chain_id, signed.registry), RECEIPT_TYPES, message)
    try:
        signer = Account.recover_message(signable, signature=signed.signature)
    except Exception:  # NOTE: eth_keys raises several types for garbage signatures
        return False
    if signer.lower() != r.provider.lower():
        return False
    return provider is None or signer.lower() == provider.lower()
