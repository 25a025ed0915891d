"""Paying with InferenceEscrow vouchers on a real anvil with the deployed suite and real models.

Covers the paid path end to end (openai client + VoucherAuth, receipts, the
batch committed on chain and verified by ReceiptRegistry, vouchers redeemed
for exactly the charged total), every refusal with its status and message, a
gateway restart, and concurrent requests sharing one voucher's headroom.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
from eth_account import Account

from nodeai.chain.anvil import ANVIL_KEYS
from nodeai.serving.chain_view import ChainView
from nodeai.serving.client import VoucherAuth, VoucherWallet, receipt_from_usage, verify_inclusion, verify_receipt
from nodeai.serving.engines.base import Engine, GenerationRequest
from nodeai.serving.gateway import GatewayServer, create_app
from nodeai.serving.limits import Limits
from nodeai.serving.payments import VOUCHER_HEADER, price_for_tokens
from nodeai.serving.settlement import commit_receipt_batches, redeem_vouchers
from nodeai.serving.store import GatewayStore

from .conftest import EMBEDDER, LLM, PROVIDER_KEY, Chain, running

pytestmark = pytest.mark.integration

PROVIDER = Account.from_key(PROVIDER_KEY)
KEYS = {"requester": ANVIL_KEYS[4], "payer2": ANVIL_KEYS[5], "payer3": ANVIL_KEYS[6]}
PROMPT = "The capital of France is"


@dataclass
class Paid:
    chain: Chain
    store: GatewayStore
    view: ChainView
    server: GatewayServer
    clients: list[openai.OpenAI] = field(default_factory=list)

    def wallet(self, payer: str = "requester", headroom: int = 10_000, **overrides) -> VoucherWallet:
        escrow = overrides.pop("escrow", self.chain.market.escrow.address)
        return VoucherWallet(KEYS[payer], overrides.pop("provider", PROVIDER.address),
                             overrides.pop("chain_id", self.chain.market.deployment.chain_id), escrow,
                             {LLM: self.chain.llm_id, EMBEDDER: self.chain.embed_id}, headroom, **overrides)

    def openai(self, wallet: VoucherWallet) -> openai.OpenAI:
        """An unchanged openai client paying with ``wallet`` (closed with the module)."""
        client = openai.OpenAI(base_url=self.server.base_url, api_key="unused", max_retries=0,
                               http_client=httpx2.Client(auth=VoucherAuth(wallet)))
        self.clients.append(client)
        return client

    def post(self, path: str, body: dict, voucher: str | None) -> httpx.Response:
        headers = {VOUCHER_HEADER: voucher} if voucher is not None else {}
        return httpx.post(self.server.base_url + path, json=body, headers=headers, timeout=120)


def make_app(chain: Chain, store: GatewayStore, engines: list[Engine], view: ChainView | None = None):
    view = view or ChainView(chain.w3, chain.market.deployment, PROVIDER.address, [chain.llm_id, chain.embed_id])
    return create_app(engines, provider_key=PROVIDER_KEY, database=store, chain=view,
                      model_ids={LLM: chain.llm_id, EMBEDDER: chain.embed_id}, manage_engines=False,
                      limits=Limits(max_tokens_cap=64, rate_limit_per_s=1_000, rate_limit_burst=1_000))


@pytest.fixture(scope="module")
def paid(chain: Chain, llm_engine: Engine, embed_engine: Engine, tmp_path_factory) -> Iterator[Paid]:
    store = GatewayStore(tmp_path_factory.mktemp("paid") / "gateway.db", PROVIDER.address)
    view = ChainView(chain.w3, chain.market.deployment, PROVIDER.address, [chain.llm_id, chain.embed_id])
    with running(make_app(chain, store, [llm_engine, embed_engine], view)) as server:
        state = Paid(chain, store, view, server)
        yield state
        for client in state.clients:
            client.close()
    store.close()


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


def test_paid_requests_end_to_end(paid: Paid) -> None:
    """Pay per request with vouchers through the unchanged openai client; receipts verify by signature and,
    once committed, on chain; redeeming the vouchers pays exactly what was charged."""
    market, chain = paid.chain.market, paid.chain
    wallet = paid.wallet()
    client = paid.openai(wallet)
    completion = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=0)
    assert "Paris" in completion.choices[0].text
    first = receipt_from_usage(completion.usage)
    assert first.receipt.amount == price_for_tokens(completion.usage.total_tokens, chain.llm_price)
    assert first.receipt.payer == market.address("requester") and first.receipt.model_id == chain.llm_id
    assert wallet.totals[chain.llm_id] == first.receipt.amount == int(completion.usage.model_extra["nodeai_charged_total"])
    streamed = list(client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4, temperature=0, stream=True))
    stream_receipt = receipt_from_usage({"nodeai_receipt": streamed[-1].model_extra["nodeai_receipt"]})
    embedded = client.embeddings.create(model=EMBEDDER, input=["paid embeddings", "two inputs"])
    receipts = [first, stream_receipt, receipt_from_usage(embedded.usage)]
    assert all(verify_receipt(r, PROVIDER.address) for r in receipts)
    # the wallet learnt the running totals from headers and from the stream's last chunk
    llm_total = first.receipt.amount + stream_receipt.receipt.amount
    assert wallet.totals == {chain.llm_id: llm_total, chain.embed_id: receipts[2].receipt.amount}

    # the receipt batch goes on chain; any client can then prove its receipt was metered as billed
    committed = commit_receipt_batches(paid.store, chain.w3, PROVIDER, market.receipts)
    assert sum(len(b.receipts) for b in committed) >= 3
    proof = httpx.get(f"{paid.server.base_url}/nodeai/receipts/0x{first.receipt.request_hash.hex()}").json()
    assert proof["committed"] and proof["receipt"] == first.to_json()
    root, siblings = bytes.fromhex(proof["root"][2:]), [bytes.fromhex(p[2:]) for p in proof["proof"]]
    assert verify_inclusion(first, root, siblings, registry=market.receipts)
    assert market.receipts.functions.verifyReceipt(root, first.receipt.as_tuple(), siblings).call()
    tampered = first.receipt.__class__(*[*first.receipt.as_tuple()[:7], first.receipt.amount - 1, first.receipt.timestamp])
    assert not market.receipts.functions.verifyReceipt(root, tampered.as_tuple(), siblings).call()

    # vouchers carried headroom; the client settles its exact totals and the provider redeems them
    for model in (LLM, EMBEDDER):
        wallet.settle(paid.server.url, model)
    before = market.balance("provider")
    result = redeem_vouchers(paid.store, chain.w3, PROVIDER, market.escrow)
    charged = {chain.llm_id: llm_total, chain.embed_id: receipts[2].receipt.amount}
    assert result.paid == sum(charged.values())
    for model_id, total in charged.items():
        assert market.escrow.functions.redeemed(market.address("requester"), PROVIDER.address, model_id).call() == total
    assert 0 < market.balance("provider") - before <= result.paid
    assert redeem_vouchers(paid.store, chain.w3, PROVIDER, market.escrow).paid == 0  # nothing left, nothing twice


def header(wallet: VoucherWallet, model_id: int, cumulative: int, **edits) -> str:
    body = json.loads(base64.urlsafe_b64decode(wallet.sign(model_id, cumulative) + "=="))
    for key, value in edits.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def test_every_bad_voucher_is_refused_with_what_to_fix(paid: Paid) -> None:
    chain = paid.chain
    body = {"model": EMBEDDER, "input": "refused"}
    wallet = paid.wallet()
    cases = [
        (None, 402, "voucher_required", f"voucher in the {VOUCHER_HEADER} header"),
        ("not a voucher", 402, "malformed_voucher", "not base64url-encoded JSON"),
        (header(wallet, chain.embed_id, 10**6, payer=paid.chain.market.address("payer2")), 401, "invalid_signature",
         "not to its payer"),
        (paid.wallet(provider=chain.market.address("payer3")).sign(chain.embed_id, 10**6), 402, "wrong_provider",
         f"sign a voucher for {PROVIDER.address}"),
        (paid.wallet(chain_id=1).sign(chain.embed_id, 10**6), 402, "wrong_chain", "sign it with chainId 31337"),
        (header(paid.wallet(chain_id=1), chain.embed_id, 10**6, chainId=None), 401, "invalid_signature",
         "chainId 31337"),
        (paid.wallet(escrow=chain.market.receipts.address).sign(chain.embed_id, 10**6), 402, "wrong_contract",
         chain.market.escrow.address),
        (paid.wallet(valid_for=-5).sign(chain.embed_id, 10**6), 402, "voucher_expired", "the voucher expired"),
        (paid.wallet(valid_for=20).sign(chain.embed_id, 10**6), 402, "voucher_expired", "needs at least 60 s"),
        (wallet.sign(chain.llm_id, 10**6), 402, "wrong_model", f"sign a voucher with modelId {chain.embed_id}"),
        (wallet.sign(chain.embed_id, 1), 402, "voucher_too_low", "sign a voucher with cumulativeAmount >="),
    ]
    for voucher, status, code, says in cases:
        response = paid.post("/embeddings", body, voucher)
        assert (response.status_code, error(response)["code"]) == (status, code), (code, response.text)
        assert says in error(response)["message"], (code, error(response)["message"])
    # the 402 for a missing voucher carries what a client needs to sign one
    details = error(paid.post("/embeddings", body, None))["nodeai"]
    assert details["escrow"] == chain.market.escrow.address and details["model_id"] == chain.embed_id
    assert int(details["max_price"]) > 0


def test_an_under_funded_payer_is_told_how_much_to_deposit(paid: Paid) -> None:
    market = paid.chain.market
    market.deposit(3, payer="payer3")
    wallet = paid.wallet("payer3")
    response = paid.post("/embeddings", {"model": EMBEDDER, "input": "a text that costs more than 3 units " * 4},
                         wallet.sign(paid.chain.embed_id, 10**6))
    assert response.status_code == 402 and error(response)["code"] == "insufficient_deposit"
    missing = int(error(response)["nodeai"]["missing"])
    assert f"deposit at least {missing} more" in error(response)["message"]
    market.deposit(missing, payer="payer3")  # the gateway re-reads the chain before refusing
    response = paid.post("/embeddings", {"model": EMBEDDER, "input": "a text that costs more than 3 units " * 4},
                         wallet.sign(paid.chain.embed_id, 10**6))
    assert response.status_code == 200, response.text


def test_concurrent_requests_cannot_spend_one_vouchers_headroom_twice(paid: Paid) -> None:
    chain, market = paid.chain, paid.chain.market
    market.deposit(10**6, payer="payer2")
    wallet = paid.wallet("payer2")
    body = {"model": LLM, "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
    prompt_tokens = paid.server.app.state.gateway.models[LLM].engine.count_tokens(
        LLM, GenerationRequest(model=LLM, prompt=PROMPT))
    one_request = price_for_tokens(prompt_tokens + 4, chain.llm_price)
    voucher = wallet.sign(chain.llm_id, one_request + one_request // 2)  # covers one request, not two
    barrier, results = threading.Barrier(2), []

    def send() -> None:
        barrier.wait()
        results.append(paid.post("/completions", body, voucher))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 402], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 402)
    assert error(refused)["code"] == "voucher_too_low"
    served = next(r for r in results if r.status_code == 200).json()
    usage = served["usage"]
    assert int(usage["nodeai_charged_total"]) == int(usage["nodeai_receipt"]["amount"]) == price_for_tokens(
        usage["total_tokens"], chain.llm_price)


def test_a_restarted_gateway_still_refuses_a_replayed_voucher(paid: Paid, llm_engine: Engine, embed_engine: Engine,
                                                              tmp_path: Path) -> None:
    chain = paid.chain
    body = {"model": EMBEDDER, "input": "restart me"}
    price = price_for_tokens(embed_engine.count_tokens(EMBEDDER, body["input"]), chain.embed_price)
    wallet = paid.wallet(headroom=price)
    voucher = wallet.sign(chain.embed_id, price)  # pays for exactly one request
    store = GatewayStore(tmp_path / "gateway.db", PROVIDER.address)
    with running(make_app(chain, store, [llm_engine, embed_engine])) as server:
        first = httpx.post(server.base_url + "/embeddings", json=body, headers={VOUCHER_HEADER: voucher})
        assert first.status_code == 200
        total = int(first.headers["X-NodeAI-Charged-Total"])
    store.close()
    store = GatewayStore(tmp_path / "gateway.db", PROVIDER.address)
    with running(make_app(chain, store, [llm_engine, embed_engine])) as server:
        replay = httpx.post(server.base_url + "/embeddings", json=body, headers={VOUCHER_HEADER: voucher})
        assert replay.status_code == 402 and error(replay)["code"] == "voucher_too_low"
        assert error(replay)["nodeai"]["charged_total"] == str(total)
        wallet.observe(chain.embed_id, total)
        fresh = httpx.post(server.base_url + "/embeddings", json=body,
                           headers={VOUCHER_HEADER: wallet.sign(chain.embed_id, total + price)})
        assert fresh.status_code == 200 and int(fresh.headers["X-NodeAI-Charged-Total"]) == 2 * total
    # both vouchers are kept for redemption, across the restart too
    assert [v.cumulative_amount for v in store.vouchers(wallet.payer, chain.embed_id)] == [price, total + price]
    assert total == price
    store.close()


def test_a_client_that_lost_its_total_is_resynced_by_the_402(paid: Paid) -> None:
    # a new wallet of a payer the gateway already charged knows no totals: its first voucher is too low,
    # and the auth retries once with the amount the 402 asks for (within its headroom: 3 is this
    # request's maximum price, less than the total already charged plus it)
    earlier = paid.openai(paid.wallet()).embeddings.create(model=EMBEDDER, input="charged before")
    charged = int(earlier.usage.model_extra["nodeai_charged_total"])
    wallet = paid.wallet(headroom=3)
    reply = paid.openai(wallet).embeddings.create(model=EMBEDDER, input="resync")
    assert int(reply.usage.model_extra["nodeai_charged_total"]) == wallet.totals[paid.chain.embed_id] > charged


def test_a_withdrawal_about_to_unlock_makes_the_deposit_unusable(paid: Paid) -> None:
    """Runs last: it moves the chain's clock."""
    market = paid.chain.market
    market.send("deployer", market.escrow.functions.setWithdrawTimelock(60), "setWithdrawTimelock")
    market.deposit(10**6, payer="payer3")
    wallet = paid.wallet("payer3")
    paid.view.forget(market.address("payer3"))
    market.send("payer3", market.escrow.functions.requestWithdrawal(PROVIDER.address), "requestWithdrawal")
    market.advance_time(50)  # unlocks in 10 s: within the gateway's safety margin
    body = {"model": EMBEDDER, "input": "withdrawing"}
    response = paid.post("/embeddings", body, wallet.sign(paid.chain.embed_id, 10**7))
    assert response.status_code == 402 and error(response)["code"] == "withdrawal_pending"
    assert "deposit again" in error(response)["message"]
    market.deposit(1, payer="payer3")  # cancels the withdrawal
    paid.view.forget(market.address("payer3"))
    assert paid.post("/embeddings", body, wallet.sign(paid.chain.embed_id, 10**7)).status_code == 200
