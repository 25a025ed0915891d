"""``nodeai infer`` against a dishonest gateway: what it reports is checked, never believed.

The gateway here is a small real HTTP server on loopback that speaks the
NodeAI gateway protocol (``/health``, ``/v1/models``, a paid
``/v1/chat/completions`` with a receipt signed by the registered provider's
key, ``/v1/nodeai/vouchers``) and can be told to lie: a tampered receipt, a
wrong amount, an inflated running total, a 402 claiming a total the wallet
never signed for. The chain, the contracts, the deposit and the wallet are
real. An honest gateway is served by the real one in tests/docs/test_quickstart.py;
the fake one is the point here, because no real gateway lies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from nodeai.chain.anvil import ANVIL_KEYS
from nodeai.chain.receipts import Receipt
from nodeai.serving.payments import VOUCHER_HEADER, decode_voucher_header, price_for_tokens
from nodeai.serving.receipts import ReceiptSigner, request_hash
from tests.cli.conftest import ONE, ROLES, Chain, run, run_json

MODEL = "fake-model"
PROMPT_TOKENS, COMPLETION_TOKENS = 10, 5


class FakeGateway:
    """A NodeAI gateway in a thread; ``mode`` says how it lies ("honest" does not)."""

    def __init__(self, chain: Chain, mode: str = "honest", total: int = 0):
        self.chain, self.mode, self.total = chain, mode, total
        self.provider, self.payer = chain.market.address("provider"), chain.market.address("requester")
        self.price = chain.market.providers.functions.modelPrice(self.provider, chain.model_id).call()
        self.signer = ReceiptSigner(ANVIL_KEYS[ROLES.index("provider")], chain.deployment.chain_id,
                                    chain.deployment.address("ReceiptRegistry"))  # fmt: skip
        self.chat_vouchers: list[int] = []  # cumulative amounts of the vouchers sent with requests
        self.settlements: list[int] = []  # those handed in at /v1/nodeai/vouchers
        self.probes: list[int] = []  # vouchers for 0 there, which ask the running total
        self.documents: dict[str, Any] = {}  # what GET /v1/nodeai/receipts/{hash} answers, by hash
        self.gets: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                gateway.gets.append(self.path)
                if self.path.startswith("/v1/nodeai/receipts/"):
                    found = gateway.documents.get(self.path.rsplit("/", 1)[1])
                    self.reply(200, found) if found else self.reply(404, {"error": {"message": "no such receipt"}})
                elif self.path == "/health":
                    self.reply(200, {"status": "ok", "provider": gateway.provider})
                elif self.path == "/v1/models":
                    self.reply(200, {"data": [{"id": MODEL, "nodeai": {"model_id": gateway.chain.model_id}}]})
                else:
                    self.reply(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                voucher = decode_voucher_header(self.headers[VOUCHER_HEADER]).voucher
                if self.path == "/v1/nodeai/vouchers":  # NOTE: as the real gateway: a voucher below the total is refused
                    (gateway.settlements if voucher.cumulative_amount else gateway.probes).append(voucher.cumulative_amount)
                    if voucher.cumulative_amount < gateway.total:
                        self.reply(402, {"error": {"code": "voucher_too_low", "message": "below the charged total",
                                                   "nodeai": {"charged_total": str(gateway.total)}}})
                    else:
                        self.reply(200, {"charged_total": str(gateway.total)})
                    return
                gateway.chat_vouchers.append(voucher.cumulative_amount)
                self.reply(*gateway.chat(json.loads(raw), voucher.cumulative_amount))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def chat(self, body: dict[str, Any], cumulative: int) -> tuple[int, Any, dict[str, str]]:
        max_price = price_for_tokens(PROMPT_TOKENS + int(body["max_tokens"]), self.price)
        claimed = self.total + (10 * ONE if self.mode == "claims_more" else 0)
        if cumulative < claimed + max_price:
            return 402, {"error": {"code": "voucher_too_low", "message": "voucher too low", "nodeai": {
                "charged_total": str(claimed), "reserved": "0", "max_price": str(max_price),
                "required_cumulative": str(claimed + max_price)}}}, {}
        amount = price_for_tokens(PROMPT_TOKENS + COMPLETION_TOKENS, self.price)
        if self.mode == "wrong_amount":
            amount += 1
        response_id = f"chatcmpl-{time.monotonic_ns()}"
        receipt = Receipt(request_hash(body, response_id), self.provider, self.payer, self.chain.model_id,
                          PROMPT_TOKENS, COMPLETION_TOKENS, 120, amount, int(time.time()))  # fmt: skip
        signed = self.signer.sign(receipt).to_json()
        if self.mode == "tampered":
            signed["tokensOut"] = COMPLETION_TOKENS - 1  # NOTE: a field changed after signing
        self.total += amount
        reported = self.total + (ONE // 10 if self.mode == "inflated" else 0)
        answer = {"id": response_id, "object": "chat.completion", "model": body["model"],
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS, "nodeai_receipt": signed,
                            "nodeai_charged_total": str(reported)}}  # fmt: skip
        return 200, answer, {"X-NodeAI-Charged-Total": str(reported)}

    def __enter__(self) -> "FakeGateway":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def deposited(chain: Chain, wallet: str) -> str:
    assert run("escrow", "deposit", "1", "--provider", chain.market.address("provider")).exit_code == 0
    return wallet


@pytest.fixture
def gateway(chain: Chain) -> Iterator[FakeGateway]:
    with FakeGateway(chain) as fake:
        yield fake


def infer(gateway: FakeGateway, *extra: str) -> Any:
    return run("infer", "What is the capital of France?", "--model", MODEL, "--gateway-url", gateway.url,
               "--max-tokens", "16", *extra)  # fmt: skip


def kept_totals(home: Path) -> dict[str, Any]:
    path = home / "receipts" / "totals.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def test_honest_gateway_is_settled_for_exactly_the_computed_total(gateway: FakeGateway, deposited: str, home: Path) -> None:
    amount = price_for_tokens(PROMPT_TOKENS + COMPLETION_TOKENS, gateway.price)
    first = infer(gateway, "--json")
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["receipt_verified"] and data["charged"] == amount and data["expected_total"] == amount
    assert data["settled_total"] == amount and gateway.settlements == [amount]
    assert [entry["total"] for entry in kept_totals(home).values()] == [str(amount)]
    assert not list((home / "receipts").glob(".totals.json.*.tmp")), "the temporary file was left behind"

    second = infer(gateway)  # the kept total is the start of the next request's voucher
    assert second.exit_code == 0, second.stderr
    assert gateway.chat_vouchers == [ONE, amount + ONE] and gateway.settlements == [amount, 2 * amount]
    assert "was left in escrow for it before this request" in second.stdout and "deposit)" not in second.stdout
    assert [entry["total"] for entry in kept_totals(home).values()] == [str(2 * amount)]


def test_a_new_home_asks_the_gateways_total_once(chain: Chain, deposited: str, home: Path) -> None:
    with FakeGateway(chain, total=300) as gateway:  # NOTE: another program paid 300 on this channel before
        amount = price_for_tokens(PROMPT_TOKENS + COMPLETION_TOKENS, gateway.price)
        result = infer(gateway, "--json")
        again = infer(gateway, "--json")
    assert result.exit_code == 0, result.stderr
    assert "the gateway says 0.0003 TUSD so far" in result.stderr
    data = json.loads(result.stdout)
    assert data["expected_total"] == data["charged_total"] == 300 + amount == data["settled_total"]
    assert again.exit_code == 0 and "the gateway says" not in again.stderr  # kept now: not asked again
    assert gateway.probes == [0] and gateway.settlements == [300 + amount, 300 + 2 * amount]


@pytest.mark.parametrize("mode, problem", [
    ("tampered", "is not signed by"),
    ("wrong_amount", "the on-chain price makes that"),
    ("inflated", "the gateway reports a running total of"),
])  # fmt: skip
def test_a_dishonest_answer_fails_and_nothing_is_settled(chain: Chain, deposited: str, home: Path, mode: str,
                                                         problem: str) -> None:  # fmt: skip
    with FakeGateway(chain, mode) as gateway:
        human = infer(gateway)
        as_json = infer(gateway, "--json")
    assert human.exit_code == 1 and problem in human.stderr and "Traceback" not in human.stderr, human.stderr
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert not data["receipt_verified"] and data["settled_total"] is None and "saved_as" not in data
    assert any(problem in p for p in data["problems"]), data["problems"]
    assert gateway.settlements == [], "a settlement voucher was sent for a request that failed its checks"
    assert kept_totals(home) == {} and not list((home / "receipts").glob("0x*.json"))


def test_a_402_claiming_more_than_the_wallet_signed_is_refused(chain: Chain, deposited: str, home: Path) -> None:
    with FakeGateway(chain) as gateway:
        assert infer(gateway).exit_code == 0
        gateway.mode = "claims_more"  # NOTE: now it says this wallet owes 10 TUSD more than it ever signed for
        refused = infer(gateway)
    assert refused.exit_code == 1 and "more than this wallet ever signed for" in refused.stderr, refused.stderr
    assert len(gateway.chat_vouchers) == 2, "the wallet retried with a voucher for the claimed total"
    assert max(gateway.chat_vouchers) <= gateway.total + ONE
    assert len(gateway.settlements) == 1


# -- `nodeai receipts verify` of what `nodeai infer` kept --------------------------------------------
def committed_document(chain: Chain, kept: dict[str, Any]) -> dict[str, Any]:
    """The kept receipt committed on chain by its provider, as the gateway would then serve it."""
    from nodeai.serving.receipts import receipt_from_json

    tree, _ = chain.market.commit_receipts([receipt_from_json(kept).receipt])
    return {"receipt": dict(kept), "root": "0x" + tree.root.hex(), "proof": ["0x" + p.hex() for p in tree.proof(0)],
            "committed": True}


def test_receipts_verify_checks_what_the_gateway_answers(chain: Chain, deposited: str, home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    with FakeGateway(chain) as served, FakeGateway(chain) as other:
        data = json.loads(infer(served, "--json").stdout)
        kept = data["receipt"]
        request_hash = data["request_hash"]
        good = committed_document(chain, kept)
        served.documents[request_hash] = good

        assert run_json("receipts", "verify", "--latest")["valid"] is True
        # NODEAI_GATEWAY_URL (a default for new requests) does not redirect --latest, an explicit --gateway-url does
        monkeypatch.setenv("NODEAI_GATEWAY_URL", other.url)
        assert run_json("receipts", "verify", "--latest")["valid"] is True and other.gets == []
        missing = run("receipts", "verify", "--latest", "--gateway-url", other.url)
        assert missing.exit_code == 2 and f"the gateway at {other.url} has no receipt" in missing.stderr
        assert other.gets == [f"/v1/nodeai/receipts/{request_hash}"]
        monkeypatch.delenv("NODEAI_GATEWAY_URL")

        # the gateway's copy differs from the kept one in a field
        served.documents[request_hash] = good | {"receipt": kept | {"latencyMs": kept["latencyMs"] + 1}}
        altered = run("receipts", "verify", "--latest")
        assert altered.exit_code == 1 and "differs from the one `nodeai infer` kept: latency_ms" in altered.stderr

        # a receipt for another request, by hash and with --latest
        stranger = "0x" + "ab" * 32
        served.documents[request_hash] = good | {"receipt": kept | {"requestHash": stranger}}
        for args in (["--latest"], [request_hash, "--gateway-url", served.url]):
            wrong = run("receipts", "verify", *args)
            assert wrong.exit_code == 1 and "it is not the receipt asked for" in wrong.stderr, wrong.stderr
            assert stranger in wrong.stderr and "Traceback" not in wrong.stderr
