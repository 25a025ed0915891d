"""Client side of a NodeAI provider: pay with vouchers, check receipts.

Paying
------
``VoucherWallet`` signs InferenceEscrow vouchers for one payer and one
provider and keeps, per model, the running total the gateway reports after
each request (``X-NodeAI-Charged-Total`` header, or ``usage.nodeai_charged_total``
in a stream's last chunk). The voucher for the next request is that total
plus ``headroom`` (the most the client lets one request cost) per request in
flight. ``VoucherAuth`` plugs it into ``openai.OpenAI`` (which runs on
``httpx2``)::

    wallet = VoucherWallet(payer_key, provider, chain_id, escrow, {"smollm2-135m-instruct": 1}, headroom=5_000)
    client = openai.OpenAI(base_url=gateway + "/v1", api_key="unused",
                           http_client=httpx2.Client(auth=VoucherAuth(wallet)))

When the gateway answers 402 ``voucher_too_low`` (e.g. after the client lost
its running total) the auth signs the amount the gateway asks for and retries
once, but only if it asks for at most ``headroom`` above its total and that
total is within what this wallet signed (a new wallet, without ``totals``
kept from an earlier run, has to take the gateway's word once);
``max_total`` caps what the wallet signs for a channel. ``wallet.settle(model)`` sends a voucher for exactly the running total
(``POST /v1/nodeai/vouchers``), so the provider can redeem precisely what it
charged. ``HttpxVoucherAuth`` is the same for plain ``httpx`` clients.

Checking
--------
``receipt_from_usage`` / ``receipt_from_headers`` read a receipt;
``verify_receipt`` checks its signature (and, given the request body and the
response id, that it is about this request); ``verify_inclusion`` checks a
Merkle proof against a root and, given the ReceiptRegistry contract, that the
root is committed on chain and the contract agrees.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, AsyncIterator, Iterator, Mapping, Sequence

import httpx
import httpx2
from coincurve import PrivateKey

from nodeai.chain.receipts import verify_proof
from nodeai.chain.vouchers import Voucher

from .eth_fast import checksum, keccak256
from .payments import VOUCHER_HEADER, encode_voucher_header, voucher_digest_fast
from .receipts import (
    RECEIPT_HEADER,
    SignedReceipt,
    decode_receipt_header,
    receipt_from_json,
    request_hash,
    verify_receipt_signature,
)

__all__ = [
    "VoucherWallet",
    "SpendLimitReached",
    "VoucherAuth",
    "HttpxVoucherAuth",
    "CHARGED_TOTAL_HEADER",
    "receipt_from_usage",
    "receipt_from_headers",
    "verify_receipt",
    "verify_inclusion",
]

CHARGED_TOTAL_HEADER = "X-NodeAI-Charged-Total"
_TOTAL_IN_STREAM = re.compile(rb'"nodeai_charged_total":\s*"(\d+)"')


class VoucherWallet:
    """Signs vouchers for ``payer_key`` to ``provider`` and tracks the running total per model id.

    Thread-safe: one wallet may serve concurrent requests (sync or async).
    """

    def __init__(self, payer_key: bytes | str, provider: str, chain_id: int, escrow: str,
                 model_ids: Mapping[str, int], headroom: int | Mapping[int, int], valid_for: int = 3_600,
                 clock=time.time, totals: Mapping[int, int] | None = None, max_total: int | None = None):
        raw = bytes.fromhex(payer_key.removeprefix("0x")) if isinstance(payer_key, str) else bytes(payer_key)
        self._key = PrivateKey(raw)
        self.payer = checksum("0x" + keccak256(self._key.public_key.format(compressed=False)[1:])[-20:].hex())
        self.provider, self.chain_id = checksum(provider), chain_id
        self.escrow = checksum(escrow)
        self.model_ids = dict(model_ids)
        self.headroom = headroom
        self.valid_for, self.clock = valid_for, clock
        self.totals: dict[int, int] = dict(totals or {})
        """The charged total per model id: ``totals`` given (e.g. kept from an earlier run), then as
        reported by the gateway, within what this wallet signed."""
        self.max_total = max_total
        """The most this wallet signs for one channel (None: up to the deposit, which bounds it on chain)."""
        self._signed: dict[int, int] = dict(self.totals)
        """The highest cumulative amount signed per model id (or known from ``totals``)."""
        self._learned: set[int] = set(self.totals)
        """Model ids whose running total this wallet knows (given, or reported once)."""
        self._in_flight: dict[int, int] = {}
        self._lock = threading.Lock()

    def _headroom(self, model_id: int) -> int:
        return self.headroom if isinstance(self.headroom, int) else self.headroom[model_id]

    def sign(self, model_id: int, cumulative: int) -> str:
        """The ``X-NodeAI-Voucher`` value of a voucher for ``cumulative`` (coincurve signature, low s)."""
        if self.max_total is not None and cumulative > self.max_total:
            raise SpendLimitReached(model_id, cumulative, self.max_total)
        with self._lock:
            self._signed[model_id] = max(self._signed.get(model_id, 0), cumulative)
        voucher = Voucher(self.payer, self.provider, model_id, cumulative, int(self.clock()) + self.valid_for)
        raw = self._key.sign_recoverable(voucher_digest_fast(voucher, self.chain_id, self.escrow), hasher=None)
        return encode_voucher_header(voucher, raw[:64] + bytes([raw[64] + 27]), self.chain_id, self.escrow)

    def begin(self, model_id: int) -> str:
        """Voucher header for a new request: running total + headroom for it and each request in flight."""
        with self._lock:
            self._in_flight[model_id] = self._in_flight.get(model_id, 0) + 1
            cumulative = self.totals.get(model_id, 0) + self._headroom(model_id) * self._in_flight[model_id]
        return self.sign(model_id, cumulative)

    def end(self, model_id: int) -> None:
        with self._lock:
            self._in_flight[model_id] = max(0, self._in_flight.get(model_id, 0) - 1)

    def observe(self, model_id: int, charged_total: int) -> bool:
        """Record a total the gateway reported (totals only grow; an older report is ignored).

        # NOTE: a gateway cannot have charged more than the vouchers it was given
        # cover, so a total above the highest amount this wallet signed is refused
        # (False): taking it would make the next voucher pay for requests never
        # served. The one exception is a channel this wallet knows nothing of
        # (a new process without ``totals``): there the gateway's word is the
        # only record, as in any payment channel whose payer lost its state."""
        with self._lock:
            signed = self._signed.get(model_id, 0)
            if model_id in self._learned and charged_total > signed:
                return False
            self._learned.add(model_id)
            self._signed[model_id] = max(signed, charged_total)
            self.totals[model_id] = max(self.totals.get(model_id, 0), charged_total)
            return True

    def default_headers(self, model: str) -> dict[str, str]:
        """Headers for one request to ``model`` (``extra_headers=``), without tracking it in flight."""
        model_id = self.model_ids[model]
        return {VOUCHER_HEADER: self.sign(model_id, self.totals.get(model_id, 0) + self._headroom(model_id))}

    def settle(self, base_url: str, model: str, client: httpx.Client | httpx2.Client | None = None) -> dict[str, Any]:
        """Send a voucher for exactly the running total of ``model`` (gateway root URL, without /v1)."""
        model_id = self.model_ids[model]
        header = self.sign(model_id, self.totals.get(model_id, 0))
        http = client or httpx.Client(timeout=30)
        try:
            response = http.post(base_url.rstrip("/") + "/v1/nodeai/vouchers", headers={VOUCHER_HEADER: header})
        finally:
            if client is None:
                http.close()
        if response.status_code != 200:
            raise RuntimeError(f"the gateway refused the settlement voucher ({response.status_code}): {response.text}")
        body = response.json()
        self.observe(model_id, int(body["charged_total"]))
        return body

    # -- auth flow pieces shared by the httpx and httpx2 adapters -------------------------------
    def _model_of(self, content: bytes) -> int | None:
        try:
            body = json.loads(content) if content else None
        except ValueError:
            return None
        name = body.get("model") if isinstance(body, dict) else None
        return self.model_ids.get(name) if isinstance(name, str) else None

    def _after(self, model_id: int, headers: Mapping[str, str]) -> None:
        total = headers.get(CHARGED_TOTAL_HEADER)
        if total is not None and total.isdigit():
            self.observe(model_id, int(total))

    def _retry_amount(self, model_id: int, status: int, body: bytes) -> int | None:
        """The cumulative amount to retry with after a 402 voucher_too_low, else None."""
        if status != 402:
            return None
        try:
            error = json.loads(body)["error"]
            if error.get("code") != "voucher_too_low":
                return None
            details = error["nodeai"]
            charged, required = int(details["charged_total"]), int(details["required_cumulative"])
        except (ValueError, KeyError, TypeError):
            return None
        # NOTE: the gateway asks for its total plus this request's maximum price; more than
        # the headroom the payer allows one request, or a total this wallet never signed
        # for, goes back to the caller as the 402 it is.
        if not self.observe(model_id, charged) or required - charged > self._headroom(model_id):
            return None
        if self.max_total is not None and required > self.max_total:
            return None
        return required


class SpendLimitReached(ValueError):
    """A voucher would pass the wallet's ``max_total`` for the channel."""

    def __init__(self, model_id: int, cumulative: int, limit: int):
        super().__init__(f"a voucher for {cumulative} on model {model_id} would pass this wallet's limit of "
                         f"{limit} per channel: raise max_total to pay for more")
        self.model_id, self.cumulative, self.limit = model_id, cumulative, limit


class _SniffTotal:
    """Passes a streamed body through, picking up ``nodeai_charged_total`` and ending the request on close."""

    def __init__(self, inner: Any, wallet: VoucherWallet, model_id: int):
        self.inner, self.wallet, self.model_id = inner, wallet, model_id
        self._tail = b""
        self._ended = False

    def _scan(self, chunk: bytes) -> None:
        window = self._tail + chunk
        for match in _TOTAL_IN_STREAM.finditer(window):
            self.wallet.observe(self.model_id, int(match.group(1)))
        self._tail = window[-64:]

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.wallet.end(self.model_id)


class _SyncSniff(_SniffTotal, httpx2.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self._scan(chunk)
            yield chunk

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._end()


class _AsyncSniff(_SniffTotal, httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self._scan(chunk)
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self._end()


class _HttpxSyncSniff(_SyncSniff, httpx.SyncByteStream):
    pass


class _HttpxAsyncSniff(_AsyncSniff, httpx.AsyncByteStream):
    pass


class _ReadBody:
    """What ``_VoucherAuthFlows._flow`` yields when it needs a response's body read before it goes on."""

    def __init__(self, response: Any):
        self.response = response


class _VoucherAuthFlows:
    """The auth flows, written once for httpx and httpx2 (same Auth protocol), sync and async.

    ``_flow`` is the whole flow: it yields the requests to send (and gets their
    responses back) and, for a 402, a ``_ReadBody`` for the driver to read the
    body with ``read`` or ``aread``. ``sync_auth_flow`` and ``async_auth_flow``
    only drive it.
    """

    requires_request_body = True
    requires_response_body = False
    _sync_sniff: type = _SyncSniff
    _async_sniff: type = _AsyncSniff

    def __init__(self, wallet: VoucherWallet):
        self.wallet = wallet

    def sync_auth_flow(self, request: Any):  # type: ignore[override]
        request.read()
        flow = self._flow(request, sync=True)
        try:
            step = next(flow)
            while True:
                if isinstance(step, _ReadBody):
                    step.response.read()
                    step = next(flow)
                else:
                    step = flow.send((yield step))
        except StopIteration:
            return
        finally:
            flow.close()

    async def async_auth_flow(self, request: Any):  # type: ignore[override]
        await request.aread()
        flow = self._flow(request, sync=False)
        try:
            step = next(flow)
            while True:
                if isinstance(step, _ReadBody):
                    await step.response.aread()
                    step = next(flow)
                else:
                    step = flow.send((yield step))
        except StopIteration:
            return
        finally:
            flow.close()

    def _flow(self, request: Any, sync: bool):
        model_id = self.wallet._model_of(request.content)
        if model_id is None:
            yield request
            return
        request.headers[VOUCHER_HEADER] = self.wallet.begin(model_id)
        try:
            response = yield request
            amount = None
            if response.status_code == 402:
                yield _ReadBody(response)
                amount = self.wallet._retry_amount(model_id, 402, response.content)
            if amount is not None:
                request.headers[VOUCHER_HEADER] = self.wallet.sign(model_id, amount)
                response = yield request
        except BaseException:
            self.wallet.end(model_id)
            raise
        self._finish(response, model_id, sync)

    def _finish(self, response: Any, model_id: int, sync: bool) -> None:
        self.wallet._after(model_id, response.headers)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            # NOTE: a stream keeps its reservation until its last chunk: stay "in flight" until closed.
            response.stream = (self._sync_sniff if sync else self._async_sniff)(response.stream, self.wallet, model_id)
        else:
            self.wallet.end(model_id)


class VoucherAuth(_VoucherAuthFlows, httpx2.Auth):
    """``httpx2.Client(auth=VoucherAuth(wallet))``: what ``openai.OpenAI(http_client=...)`` takes."""


class HttpxVoucherAuth(_VoucherAuthFlows, httpx.Auth):
    """The same auth for plain ``httpx`` clients."""

    _sync_sniff = _HttpxSyncSniff
    _async_sniff = _HttpxAsyncSniff


# -- receipts ---------------------------------------------------------------------------------------
def receipt_from_usage(usage: Any) -> SignedReceipt:
    """The receipt inside an OpenAI ``usage`` (a dict, or the openai client's object)."""
    if not isinstance(usage, Mapping):
        usage = getattr(usage, "model_extra", None) or getattr(usage, "__dict__", {})
    data = usage.get("nodeai_receipt")
    if not isinstance(data, Mapping):
        raise ValueError("no nodeai_receipt in this usage: was the request served by a NodeAI gateway?")
    return receipt_from_json(data)


def receipt_from_headers(headers: Mapping[str, str]) -> SignedReceipt:
    value = headers.get(RECEIPT_HEADER)
    if value is None:
        raise ValueError(f"no {RECEIPT_HEADER} header in this response")
    return decode_receipt_header(value)


def verify_receipt(signed: SignedReceipt, provider: str | None = None, request_body: Any = None,
                   response_id: str | None = None) -> bool:
    """The receipt is signed by its provider (``provider``, when given) and, given the request body
    and response id, is about that request."""
    if not verify_receipt_signature(signed, provider):
        return False
    if request_body is not None and response_id is not None:
        return request_hash(request_body, response_id) == signed.receipt.request_hash
    return True


def verify_inclusion(signed: SignedReceipt, root: bytes, proof: Sequence[bytes], registry: Any = None) -> bool:
    """The receipt is in the Merkle tree of ``root``; with the ReceiptRegistry contract (web3), also that
    its provider committed ``root`` on chain and the contract verifies the proof."""
    if not verify_proof(proof, root, signed.receipt.leaf()):
        return False
    if registry is None:
        return True
    return bool(registry.functions.isCommitted(signed.receipt.provider, root).call()
                and registry.functions.verifyReceipt(root, signed.receipt.as_tuple(), list(proof)).call())
