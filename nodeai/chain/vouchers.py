"""EIP-712 inference vouchers: signing, verification and redemption accounting.

A voucher says "``payer`` owes ``provider`` a cumulative ``cumulative_amount``
for ``model_id``, valid until ``expiry``". The consumer signs a new one with
every request; the provider keeps only the highest and redeems it whenever it
likes. The domain is bound to the chain id and the InferenceEscrow address,
so a voucher can never be replayed on another chain or contract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_checksum_address

DOMAIN_NAME = "NodeAI InferenceEscrow"
DOMAIN_VERSION = "1"

VOUCHER_TYPES = {
    "Voucher": [
        {"name": "payer", "type": "address"},
        {"name": "provider", "type": "address"},
        {"name": "modelId", "type": "uint256"},
        {"name": "cumulativeAmount", "type": "uint256"},
        {"name": "expiry", "type": "uint256"},
    ]
}


@dataclass(frozen=True, slots=True)
class Voucher:
    payer: str
    provider: str
    model_id: int
    cumulative_amount: int
    expiry: int

    def as_tuple(self) -> tuple[str, str, int, int, int]:
        """The ABI tuple the contract takes (field order of the Vyper struct)."""
        return (self.payer, self.provider, self.model_id, self.cumulative_amount, self.expiry)

    def message(self) -> dict:
        return {
            "payer": to_checksum_address(self.payer),
            "provider": to_checksum_address(self.provider),
            "modelId": self.model_id,
            "cumulativeAmount": self.cumulative_amount,
            "expiry": self.expiry,
        }

    def to_json(self) -> dict:
        return asdict(self)


def domain(chain_id: int, escrow_address: str) -> dict:
    return {
        "name": DOMAIN_NAME,
        "version": DOMAIN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(escrow_address),
    }


def voucher_digest(voucher: Voucher, chain_id: int, escrow_address: str) -> bytes:
    """The 32-byte EIP-712 digest the wallet signs (equals the contract's ``voucherDigest``)."""
    signable = encode_typed_data(domain(chain_id, escrow_address), VOUCHER_TYPES, voucher.message())
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_voucher(voucher: Voucher, private_key: bytes | str, chain_id: int, escrow_address: str) -> bytes:
    """Sign ``voucher`` as its payer; returns the 65-byte ``r || s || v`` signature."""
    signed = Account.sign_typed_data(private_key, domain(chain_id, escrow_address), VOUCHER_TYPES, voucher.message())
    return bytes(signed.signature)


def recover_signer(voucher: Voucher, signature: bytes, chain_id: int, escrow_address: str) -> str:
    """The address that signed ``voucher`` (compare it with ``voucher.payer``)."""
    signable = encode_typed_data(domain(chain_id, escrow_address), VOUCHER_TYPES, voucher.message())
    return Account.recover_message(signable, signature=signature)


def redeemable_delta(cumulative_amount: int, already_redeemed: int, channel_balance: int) -> int:
    """What redeeming a voucher pays: the part above what was paid, capped by the deposit.

    Mirrors ``InferenceEscrow._redeem``; a stale voucher pays 0, which is
    what makes redemption idempotent and safe to retry.
    """
    if min(cumulative_amount, already_redeemed, channel_balance) < 0:
        raise ValueError("voucher amounts must be >= 0")
    if cumulative_amount <= already_redeemed:
        return 0
    return min(cumulative_amount - already_redeemed, channel_balance)
