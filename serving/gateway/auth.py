"""Who pays for a request, and the reservation that makes sure they can.

``Authorizer.authorize`` runs, in this order, the checks a paid request must
pass (each failure names the check and the fix):

1. a voucher header (``X-NodeAI-Voucher``) or an API key (``Authorization:
   Bearer``); neither: 402 with what to sign (or 401 in API-key-only mode);
2. voucher: well-formed; signed for this chain and escrow; the signature
   recovers to the voucher's payer (401 otherwise); made out to this provider;
3. the payer's rate limit (only now, so a forged voucher cannot use up
   someone else's budget);
4. voucher: for the requested model's on-chain id; not expiring within
   ``min_validity`` seconds (the provider needs time to redeem it);
5. the price bound: ``ceil((prompt tokens + max_tokens) * pricePer1k / 1000)``
   at the provider's on-chain price;
6. atomically: the cumulative amount covers charged + reserved + this bound,
   and the payer's deposit covers what it owes; the bound is reserved.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Mapping

from ..apikeys import ZERO_ADDRESS, ApiKeyStore
from ..chain_view import ChainView
from ..eth_fast import checksum
from ..errors import PaymentRequired, Unauthorized, Unavailable
from ..ledger import Ledger, Reservation
from ..limits import RateLimiter
from ..payments import (
    VOUCHER_HEADER,
    SignedVoucher,
    decode_voucher_header,
    max_price,
    recover_address,
    voucher_digest_fast,
)

__all__ = ["AuthMode", "Payer", "Charge", "Authorizer"]

AuthMode = Literal["voucher", "api_key", "both"]


@dataclass(frozen=True, slots=True)
class Payer:
    mode: Literal["voucher", "api_key"]
    account: str
    """Ledger and rate-limit key: the payer's address, or ``apikey:<id>``."""
    address: str
    """What receipts name as payer."""


@dataclass(frozen=True, slots=True)
class Charge:
    payer: Payer
    model_id: int
    price_per_1k: int
    reservation: Reservation


class Authorizer:
    def __init__(self, ledger: Ledger, provider: str, mode: AuthMode, rate_limiter: RateLimiter,
                 chain: ChainView | None = None, api_keys: ApiKeyStore | None = None,
                 offchain_prices: Mapping[str, int] | None = None, min_validity: int = 60):
        if mode in ("voucher", "both") and chain is None:
            raise ValueError(f"auth mode {mode!r} takes vouchers, which need a ChainView (rpc_url and deployments)")
        if mode in ("api_key", "both") and api_keys is None:
            raise ValueError(f"auth mode {mode!r} takes API keys, which need an ApiKeyStore (api_keys_file)")
        self.ledger, self.provider, self.mode = ledger, checksum(provider), mode
        self.rate_limiter, self.chain, self.api_keys = rate_limiter, chain, api_keys
        self.offchain_prices = dict(offchain_prices or {})
        self.min_validity = min_validity

    @property
    def takes_vouchers(self) -> bool:
        return self.mode in ("voucher", "both")

    @property
    def takes_api_keys(self) -> bool:
        return self.mode in ("api_key", "both")

    async def price(self, model: str, model_id: int | None) -> int:
        """The price per 1k tokens: on chain when the model has an id there, else the configured off-chain price."""
        if self.chain is not None and model_id is not None:
            return await self.chain.price(model_id)
        return self.offchain_prices.get(model, 0)

    async def authorize(self, headers: Mapping[str, str], model: str, model_id: int | None, prompt_tokens: int,
                        max_tokens: int) -> Charge:
        voucher_header = headers.get(VOUCHER_HEADER.lower())
        if voucher_header is not None and self.takes_vouchers:
            return await self._by_voucher(voucher_header, model, model_id, prompt_tokens, max_tokens)
        bearer = _bearer(headers.get("authorization"))
        if bearer is not None and self.takes_api_keys:
            return await self._by_api_key(bearer, model, model_id, prompt_tokens, max_tokens)
        if self.takes_vouchers:
            raise await self._voucher_required(model, model_id, prompt_tokens, max_tokens)
        raise Unauthorized("no valid API key: send it as `Authorization: Bearer nk_...` (openai.OpenAI(api_key=...))")

    def release(self, charge: Charge) -> None:
        self.ledger.release(charge.reservation)

    # -- API keys -------------------------------------------------------------------------------
    async def _by_api_key(self, token: str, model: str, model_id: int | None, prompt_tokens: int,
                          max_tokens: int) -> Charge:
        assert self.api_keys is not None
        key = self.api_keys.authenticate(token)
        if key is None:
            hint = f", or pay with a voucher in the {VOUCHER_HEADER} header" if self.takes_vouchers else ""
            raise Unauthorized(f"the API key is not valid for this provider: check the key you were given{hint}")
        payer = Payer("api_key", f"apikey:{key.id}", key.payer or ZERO_ADDRESS)
        self.rate_limiter.check(payer.account)
        # NOTE: API-key requests are metered at the on-chain price when the model has one, so a
        # provider's invoices match what its voucher clients pay; model id 0 means "not on chain".
        resolved_id = model_id if model_id is not None else 0
        price = await self.price(model, model_id)
        amount = max_price(prompt_tokens, max_tokens, price)
        reservation = self.ledger.reserve(payer.account, resolved_id, amount)
        return Charge(payer, resolved_id, price, reservation)

    # -- vouchers -------------------------------------------------------------------------------
    def verify_voucher(self, header: str) -> SignedVoucher:
        """Decode and check signature, chain, contract and provider; returns the SignedVoucher."""
        assert self.chain is not None
        signed = decode_voucher_header(header)
        voucher, chain = signed.voucher, self.chain
        if signed.chain_id is not None and signed.chain_id != chain.chain_id:
            raise PaymentRequired(f"the voucher was signed for chain id {signed.chain_id}, but this provider is paid "
                                  f"on chain id {chain.chain_id}: sign it with chainId {chain.chain_id} in the "
                                  "EIP-712 domain", code="wrong_chain")
        if signed.contract is not None and signed.contract != chain.escrow_address:
            raise PaymentRequired(f"the voucher was signed for escrow contract {signed.contract}, but this provider is "
                                  f"paid through the InferenceEscrow at {chain.escrow_address}: sign it with that "
                                  "verifyingContract", code="wrong_contract")
        signer = recover_address(voucher_digest_fast(voucher, chain.chain_id, chain.escrow_address), signed.signature)
        if signer != voucher.payer:
            raise Unauthorized(
                f"the voucher signature recovers to {signer}, not to its payer {voucher.payer}: sign it with the "
                f"payer's key over the EIP-712 domain (name 'NodeAI InferenceEscrow', version '1', chainId "
                f"{chain.chain_id}, verifyingContract {chain.escrow_address})",
                code="invalid_signature",
            )
        if voucher.provider != self.provider:
            raise PaymentRequired(f"the voucher is made out to provider {voucher.provider}, but this gateway is "
                                  f"provider {self.provider}: sign a voucher for {self.provider}", code="wrong_provider")
        return signed

    async def _by_voucher(self, header: str, model: str, model_id: int | None, prompt_tokens: int,
                          max_tokens: int) -> Charge:
        assert self.chain is not None
        signed = self.verify_voucher(header)
        voucher = signed.voucher
        payer = Payer("voucher", voucher.payer, voucher.payer)
        self.rate_limiter.check(payer.account)
        if model_id is None:
            raise PaymentRequired(f"model {model!r} has no on-chain model id on this provider, so it cannot be paid "
                                  "with a voucher: use an API key for it", code="wrong_model")
        if voucher.model_id != model_id:
            raise PaymentRequired(f"the voucher is for model id {voucher.model_id}, but {model!r} is model id "
                                  f"{model_id} on chain: sign a voucher with modelId {model_id}", code="wrong_model")
        now = int(time.time())
        if voucher.expiry < now + self.min_validity:
            state = "expired" if voucher.expiry < now else f"expires in {voucher.expiry - now} s"
            raise PaymentRequired(f"the voucher {state} (expiry {voucher.expiry}, now {now}); this provider needs at "
                                  f"least {self.min_validity} s to redeem it: sign a new one with expiry >= "
                                  f"{now + self.min_validity}", code="voucher_expired")
        price = await self.chain.price(model_id)
        if price == 0:
            raise Unavailable(f"this provider has no on-chain price for model id {model_id} "
                              "(ProviderRegistry.modelPrice is 0): it does not serve it for vouchers now",
                              code="model_not_priced")
        amount = max_price(prompt_tokens, max_tokens, price)
        funds = await self.chain.funds(voucher.payer)
        try:
            reservation = self.ledger.reserve(voucher.payer, model_id, amount, voucher, signed.signature, funds)
        except PaymentRequired as exc:
            if exc.code != "insufficient_deposit":
                raise
            # NOTE: the cached read may predate a deposit: read again once before refusing.
            funds = await self.chain.funds(voucher.payer, refresh=True)
            reservation = self.ledger.reserve(voucher.payer, model_id, amount, voucher, signed.signature, funds)
        return Charge(payer, model_id, price, reservation)

    async def _voucher_required(self, model: str, model_id: int | None, prompt_tokens: int,
                                max_tokens: int) -> PaymentRequired:
        assert self.chain is not None
        extra: dict[str, object] = {"provider": self.provider, "chain_id": self.chain.chain_id,
                                    "escrow": self.chain.escrow_address}
        how = ""
        if model_id is not None:
            price = await self.chain.price(model_id)
            bound = max_price(prompt_tokens, max_tokens, price)
            extra.update(model_id=model_id, price_per_1k=str(price), max_price=str(bound))
            how = (f" for model id {model_id} (price {price} per 1k tokens; this request may cost up to {bound}, "
                   "to add to your running total)")
        keys = " or an API key (Authorization: Bearer)" if self.takes_api_keys else ""
        return PaymentRequired(
            f"payment required: send an EIP-712 InferenceEscrow voucher in the {VOUCHER_HEADER} header{keys}. "
            f"Sign it for provider {self.provider} on chain id {self.chain.chain_id}, escrow "
            f"{self.chain.escrow_address}{how}; nodeai.serving.client.VoucherAuth does this for you",
            code="voucher_required", extra=extra,
        )  # fmt: skip

    # -- settlement vouchers --------------------------------------------------------------------
    def accept_settlement(self, header: str) -> dict[str, str | int]:
        """Store a voucher sent on its own (``POST /v1/nodeai/vouchers``): usually one for exactly the
        running total, so the provider can redeem precisely what was charged."""
        signed = self.verify_voucher(header)
        voucher = signed.voucher
        self.rate_limiter.check(voucher.payer)
        account = self.ledger.account(voucher.payer, voucher.model_id)
        if voucher.cumulative_amount < account.charged:
            raise PaymentRequired(f"the voucher's cumulativeAmount {voucher.cumulative_amount} is below the charged "
                                  f"total {account.charged} of this channel: sign at least {account.charged}",
                                  code="voucher_too_low", extra={"charged_total": str(account.charged)})
        now = int(time.time())
        if voucher.expiry < now + self.min_validity:
            raise PaymentRequired(f"the voucher expires at {voucher.expiry}, sooner than {self.min_validity} s from "
                                  f"now ({now}): sign one with expiry >= {now + self.min_validity}",
                                  code="voucher_expired")
        self.ledger.store.record_voucher(voucher, signed.signature)
        return {"payer": voucher.payer, "model_id": voucher.model_id, "charged_total": str(account.charged),
                "cumulative_amount": str(voucher.cumulative_amount)}


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
