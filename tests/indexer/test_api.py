"""The indexer's HTTP API on a real SQLite store and a real PostgreSQL store.

Entities are built by folding realistic events through ``projections.apply`` and
committed with ``Store.commit_batch``, so the documents have the shape the indexer
writes. Chain 31337, cursor at height 100 = head, 5 confirmations: rows updated at
block 95 or below are final, the ones updated at blocks 98..100 are pending.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import warnings
from typing import Any, Callable, Iterator

import psycopg
import pytest
from eth_utils import to_checksum_address
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # NOTE: starlette 1.x nags to swap httpx for httpx2 at import; httpx is what is installed.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from nodeai.indexer.api import create_app, decode_cursor, encode_cursor
from nodeai.indexer.metrics import IndexerMetrics
from nodeai.indexer.projections import apply, entity_of
from nodeai.indexer.store import Batch, Cursor, Entity, EventRow, Store, open_store

CHAIN = 31337
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = 1_000_000
PAST, FUTURE = NOW - 1_000, NOW + 1_000_000


def _address(seed: str) -> str:
    return to_checksum_address("0x" + hashlib.sha256(seed.encode()).hexdigest()[:40])


def _bytes32(seed: str) -> str:
    return "0x" + hashlib.sha256(seed.encode()).hexdigest()


ALICE, BOB, P1, P2 = _address("alice"), _address("bob"), _address("provider-1"), _address("provider-2")
ZERO = "0x" + "00" * 20
ROOT1, ROOT2 = _bytes32("root-1"), _bytes32("root-2")
assert ALICE != ALICE.lower() and P1 != P1.lower()  # mixed case, so address normalisation is exercised


class Chain:
    """Folds events into entities the way the indexer does, and commits them."""

    def __init__(self) -> None:
        self.entities: dict[tuple[str, str], Entity] = {}
        self.events: list[EventRow] = []
        self._log: dict[int, int] = {}

    def emit(self, block: int, name: str, **args: Any) -> None:
        kind, key = entity_of(name, args)  # type: ignore[misc]
        old = self.entities.get((kind, key))
        doc = apply(kind, old.doc if old else None, name, args, block)
        self.entities[(kind, key)] = Entity(kind, key, doc, old.created_block if old else block, block)
        index = self._log[block] = self._log.get(block, -1) + 1
        self.events.append(EventRow(block, index, _bytes32(f"block-{block}"), _bytes32(f"tx-{block}-{index}"),
                                    "0x" + "11" * 20, name, args, kind, key))  # fmt: skip

    def commit(self, store: Store, cursor: Cursor | None) -> None:
        store.commit_batch(CHAIN, Batch(events=self.events, entities=dict(self.entities), cursor=cursor))


def model(chain: Chain, block: int, model_id: int, owner: str, *, agent: bool = False, base: int = 0) -> None:
    chain.emit(block, "ModelRegistered", modelId=model_id, owner=owner, kind=1 if agent else 0, baseModelId=base,
               artifactCid=f"bafy-artifact-{model_id}", manifestCid=f"bafy-manifest-{model_id}", pricePer1kTokens=1000 + model_id,
               revenueShareBps=500)  # fmt: skip


def job(chain: Chain, block: int, job_id: int, requester: str, *, model_id: int = 1, deadline: int = FUTURE) -> None:
    chain.emit(block, "JobCreated", jobId=job_id, requester=requester, modelId=model_id, inputHash=_bytes32(f"in-{job_id}"),
               maxPayment=10**18, deadline=deadline, priorityProvider=ZERO, priorityUntil=0, modelOwner=ALICE,
               revenueShareBps=500, protocolFeeBps=100, challengeWindow=3600, bond=10**17, inputCid=f"bafy-in-{job_id}")  # fmt: skip


def claim(chain: Chain, block: int, job_id: int, provider: str) -> None:
    chain.emit(block, "JobClaimed", jobId=job_id, provider=provider)


def submit(chain: Chain, block: int, job_id: int, window_ends: int) -> None:
    chain.emit(block, "JobSubmitted", jobId=job_id, outputHash=_bytes32(f"out-{job_id}"), charge=10**17,
               challengeEnds=window_ends, outputCid=f"bafy-out-{job_id}", usage=1234)  # fmt: skip


def seed(store: Store) -> Chain:
    chain = Chain()
    for i in range(1, 13):  # models 1..12; 3 and 4 are agents, 6 is a fine-tune of 1, 5 is deprecated
        model(chain, 10 + i, i, ALICE if i % 2 else BOB, agent=i in (3, 4), base=1 if i == 6 else 0)
    chain.emit(30, "ModelDeprecated", modelId=5)
    for provider, block in ((P1, 31), (P2, 32)):
        chain.emit(block, "ProviderRegistered", provider=provider, endpoint=f"https://{provider[:8]}.example",
                   peerId=_bytes32(provider), stake=10**20)  # fmt: skip
    chain.emit(33, "ModelServed", provider=P1, modelId=1, pricePer1kTokens=900)
    for i in range(1, 13):  # jobs 1..12, Alice's except 10
        job(chain, 40, i, BOB if i == 10 else ALICE, model_id=2 if i == 11 else 1, deadline=PAST if i in (1, 3, 9) else FUTURE)
    claim(chain, 41, 3, P1)  # CLAIMED, deadline passed -> refundable
    for i in (4, 5, 6, 7, 8):
        claim(chain, 41, i, P1 if i != 6 else P2)
    for i in (4, 5, 6, 7):
        submit(chain, 42, i, PAST if i != 6 else FUTURE)  # 4: finalizable; 6: window still open
    chain.emit(43, "JobDisputed", jobId=5, arbitrationEnds=PAST)  # DISPUTED, window over -> finalizable
    chain.emit(44, "JobSettled", jobId=7, charge=10**17, providerAmount=8 * 10**16, modelOwnerAmount=10**16,
               protocolFee=10**16, refund=9 * 10**17)  # fmt: skip
    chain.emit(45, "Deposited", payer=ALICE, provider=P1, amount=10**18, balance=10**18)
    chain.emit(46, "WithdrawalRequested", payer=ALICE, provider=P1, unlockAt=NOW + 86400)  # final -> signal
    chain.emit(47, "Deposited", payer=BOB, provider=P1, amount=5, balance=5)
    chain.emit(48, "Deposited", payer=ALICE, provider=P2, amount=7, balance=7)
    chain.emit(50, "ReceiptsCommitted", provider=P1, root=ROOT1, count=10, tokensIn=100, tokensOut=200, amount=300,
               fromTimestamp=NOW - 100, toTimestamp=NOW - 10)  # fmt: skip
    chain.emit(51, "ReceiptsCommitted", provider=P2, root=ROOT2, count=1, tokensIn=1, tokensOut=2, amount=3,
               fromTimestamp=NOW - 100, toTimestamp=NOW - 10)  # fmt: skip
    # pending (above the finalized height 95): their conditions hold, but they must never signal
    submit(chain, 98, 8, PAST)  # window over
    job(chain, 99, 13, ALICE, deadline=PAST)  # deadline passed
    chain.emit(99, "WithdrawalRequested", payer=ALICE, provider=P2, unlockAt=NOW + 5)  # withdrawal requested
    chain.emit(100, "ModelTermsChanged", modelId=12, pricePer1kTokens=1, revenueShareBps=100, shareEffectiveAt=0)
    chain.commit(store, Cursor(100, _bytes32("block-100"), 100))
    return chain


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/indexer.db"
        return
    schema = f"api_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = open_store(store_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def seeded(store: Store) -> Store:
    seed(store)
    return store


@pytest.fixture
def make_client(store_url: str) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(confirmations: int = 5, is_ready: Callable[[], bool] | None = None, **kw: Any) -> TestClient:
        metrics = IndexerMetrics()
        app = create_app(lambda: open_store(store_url), CHAIN, confirmations, metrics, is_ready, **kw)
        client = TestClient(app)
        client.__enter__()
        client.metrics = metrics  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(seeded: Store, make_client) -> TestClient:
    return make_client()


def keys(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["key"] for item in response.json()["items"]]


def error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def sse(text: str) -> list[dict[str, Any]]:
    """Parse SSE text into events (comments and retry lines dropped)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith((":", "retry:")))
        if fields:
            events.append({"id": int(fields["id"]), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


# -- operations ----------------------------------------------------------------------------------------
def test_health_is_ok_without_touching_the_database() -> None:
    def broken() -> Store:
        raise AssertionError("health must not open the store")

    app = create_app(broken, CHAIN, 5, IndexerMetrics())
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}


def test_ready_is_503_until_caught_up_then_200(store: Store, make_client) -> None:
    client = make_client()
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert (body["ready"], body["indexed_height"], body["head"], body["lag"]) == (False, None, None, None)
    assert body["error"]["code"] == "not_ready"

    store.commit_batch(CHAIN, Batch(cursor=Cursor(50, "0xaa", 100)))
    response = client.get("/ready")
    assert response.status_code == 503
    assert {k: response.json()[k] for k in ("ready", "indexed_height", "head", "lag")} == {
        "ready": False, "indexed_height": 50, "head": 100, "lag": 50}  # fmt: skip
    assert "50 blocks behind" in response.json()["error"]["message"]

    store.commit_batch(CHAIN, Batch(cursor=Cursor(99, "0xbb", 100)))
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True, "indexed_height": 99, "head": 100, "lag": 1}


def test_ready_defers_to_is_ready_when_given(store: Store, make_client) -> None:
    store.commit_batch(CHAIN, Batch(cursor=Cursor(10, "0xaa", 100)))
    flag = {"ready": False}
    client = make_client(is_ready=lambda: flag["ready"])
    assert client.get("/ready").status_code == 503
    flag["ready"] = True
    response = client.get("/ready")
    assert response.status_code == 200 and response.json()["lag"] == 90


def test_metrics_report_head_lag_from_the_cursor(store: Store, make_client) -> None:
    client = make_client()
    store.commit_batch(CHAIN, Batch(cursor=Cursor(60, "0xaa", 100)))
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "nodeai_indexer_head_lag_blocks 40.0" in response.text
    assert "nodeai_indexer_indexed_height 60.0" in response.text
    store.commit_batch(CHAIN, Batch(cursor=Cursor(100, "0xbb", 100)))
    assert "nodeai_indexer_head_lag_blocks 0.0" in client.get("/metrics").text


def test_cors_allows_browsers_to_read_and_refuses_writes(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": "https://dapp.example"})
    assert response.headers["access-control-allow-origin"] == "*"
    body = error(client.post("/jobs"), 405)
    assert "read-only" in body["message"]


def test_openapi_lists_every_path_with_400_not_422(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/health", "/ready", "/metrics", "/models", "/agents", "/providers", "/jobs", "/channels", "/receipts",
        "/models/{model_id}", "/providers/{address}", "/jobs/{job_id}", "/jobs/{job_id}/history",
        "/channels/{payer}/{provider}", "/receipts/{provider}/{root}", "/signals", "/events", "/stream",
    }  # fmt: skip
    jobs = schema["paths"]["/jobs"]["get"]
    assert {p["name"] for p in jobs["parameters"]} == {"state", "requester", "provider", "model_id", "limit", "cursor"}
    assert jobs["description"] and "400" in jobs["responses"] and "422" not in jobs["responses"]
    assert "state" in json.dumps(schema["components"]["schemas"]["JobOut"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- lists ---------------------------------------------------------------------------------------------
def test_pagination_round_trip_returns_every_item_once_in_order(client: TestClient) -> None:
    seen, cursor, pages = [], None, 0
    while True:
        response = client.get("/jobs", params={"limit": 5, **({"cursor": cursor} if cursor else {})})
        seen += keys(response)
        pages += 1
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(i) for i in range(1, 14)]  # numeric order: job 10 after job 9
    assert pages == 3
    full = client.get("/jobs", params={"limit": 13}).json()
    assert full["next_cursor"] is None and len(full["items"]) == 13  # an exactly full last page has no next page


def test_pagination_keeps_filters(client: TestClient) -> None:
    first = client.get("/models", params={"owner": ALICE, "limit": 2}).json()
    second = client.get("/models", params={"owner": ALICE, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [i["key"] for i in first["items"] + second["items"]] == ["1", "5", "7", "9"]


def test_cursor_is_base64url_of_the_sort_key() -> None:
    token = encode_cursor("0" * 29 + "9")
    assert "=" not in token and decode_cursor(token, "job") == "0" * 29 + "9"
    assert base64.urlsafe_b64decode(token + "==").decode() == "0" * 29 + "9"


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/models", {}, ["1", "2", "5", "6", "7", "8", "9", "10", "11", "12"]),
        ("/models", {"owner": ALICE}, ["1", "5", "7", "9", "11"]),
        ("/models", {"owner": ALICE.lower()}, ["1", "5", "7", "9", "11"]),  # any letter case
        ("/models", {"kind": "agent"}, ["3", "4"]),
        ("/models", {"deprecated": "true"}, ["5"]),
        ("/models", {"deprecated": "false", "owner": BOB}, ["2", "6", "8", "10", "12"]),
        ("/models", {"base_model_id": "1"}, ["6"]),
        ("/agents", {}, ["3", "4"]),
        ("/agents", {"owner": BOB}, ["4"]),
        ("/providers", {}, sorted([P1, P2])),
        ("/providers", {"registered": "true"}, sorted([P1, P2])),
        ("/providers", {"registered": "false"}, []),
        ("/jobs", {"state": "SUBMITTED"}, ["4", "6", "8"]),
        ("/jobs", {"state": "claimed"}, ["3"]),
        ("/jobs", {"requester": BOB.lower()}, ["10"]),
        ("/jobs", {"provider": P2}, ["6"]),
        ("/jobs", {"model_id": "2"}, ["11"]),
        ("/jobs", {"state": "OPEN", "requester": ALICE}, ["1", "2", "9", "11", "12", "13"]),
        ("/channels", {"payer": ALICE}, sorted([f"{ALICE}:{P1}", f"{ALICE}:{P2}"])),
        ("/channels", {"provider": P1.lower()}, sorted([f"{ALICE}:{P1}", f"{BOB}:{P1}"])),
        ("/receipts", {"provider": P2}, [f"{P2}:{ROOT2}"]),
    ],
)
def test_each_filter(client: TestClient, path: str, params: dict[str, str], expected: list[str]) -> None:
    assert keys(client.get(path, params=params)) == expected


@pytest.mark.parametrize(("path", "kind"), [("/models", "model"), ("/agents", "model"), ("/providers", "provider"),
                                           ("/jobs", "job"), ("/channels", "channel"), ("/receipts", "receipt_batch")])  # fmt: skip
def test_list_items_are_exactly_the_entity_documents(client: TestClient, seeded: Store, path: str, kind: str) -> None:
    items = client.get(path, params={"limit": 500}).json()["items"]
    assert items
    stored = seeded.load_entities(CHAIN, [(kind, item["key"]) for item in items])
    for item in items:  # the response models neither drop nor add nor retype a field
        assert item == stored[(kind, item["key"])].as_json(95)


def test_job_document_fields(client: TestClient) -> None:
    item = client.get("/jobs/4").json()
    assert (item["state"], item["provider"], item["usage"], item["window_ends"]) == ("SUBMITTED", P1, 1234, PAST)
    assert item["job_id"] == 4 and item["status"] == "final" and item["updated_block"] == 42


def test_unknown_filter_is_400_listing_the_allowed_ones(client: TestClient) -> None:
    body = error(client.get("/jobs", params={"colour": "red"}), 400)
    assert body["param"] == "colour" and body["code"] == "unknown_filter"
    for allowed in ("state", "requester", "provider", "model_id"):
        assert allowed in body["message"]
    agents = error(client.get("/agents", params={"kind": "model"}), 400)  # /agents fixes kind
    assert agents["code"] == "unknown_filter" and "owner" in agents["message"]


@pytest.mark.parametrize("limit", ["0", "501", "-1", "many"])
def test_bad_limit_is_400(client: TestClient, limit: str) -> None:
    body = error(client.get("/models", params={"limit": limit}), 400)
    assert body["message"] == "limit must be 1..500" and body["param"] == "limit"


def test_limit_bounds_are_accepted(client: TestClient) -> None:
    assert len(keys(client.get("/jobs", params={"limit": 1}))) == 1
    assert len(keys(client.get("/jobs", params={"limit": 500}))) == 13


@pytest.mark.parametrize("cursor", ["!!!", "not base64", "YQ", "", "%%", encode_cursor("x y"), "A" * 2000])
def test_malformed_cursor_is_400(client: TestClient, cursor: str) -> None:
    body = error(client.get("/jobs", params={"cursor": cursor}), 400)
    assert body["message"] == "malformed cursor: pass the next_cursor of a previous page"
    assert body["code"] == "malformed_cursor"


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [("/jobs", {"requester": "0x123"}, "requester"), ("/models", {"owner": "alice"}, "owner"),
     ("/jobs", {"state": "DONE"}, "state"), ("/jobs", {"model_id": "x"}, "model_id"),
     ("/models", {"deprecated": "maybe"}, "deprecated"), ("/models", {"kind": "robot"}, "kind")],
)  # fmt: skip
def test_invalid_filter_values_are_400(client: TestClient, path: str, params: dict[str, str], param: str) -> None:
    assert error(client.get(path, params=params), 400)["param"] == param


# -- single entities -----------------------------------------------------------------------------------
def test_get_each_entity(client: TestClient) -> None:
    assert client.get("/models/6").json()["base_model_id"] == 1
    assert client.get("/models/3").json()["kind"] == "agent"
    assert client.get("/agents/3").json()["key"] == "3"
    provider = client.get(f"/providers/{P1.lower()}").json()
    assert provider["address"] == P1 and provider["models"] == {"1": 900}
    assert client.get("/jobs/10").json()["requester"] == BOB
    channel = client.get(f"/channels/{ALICE.lower()}/{P1}").json()
    assert channel["key"] == f"{ALICE}:{P1}" and channel["unlock_at"] == NOW + 86400
    batch = client.get(f"/receipts/{P1}/{ROOT1.upper().replace('0X', '0x')}").json()
    assert batch["root"] == ROOT1 and batch["count"] == 10


@pytest.mark.parametrize(
    ("path", "words"),
    [("/models/99", "model 99"), ("/agents/1", "not an agent"), (f"/providers/{ALICE}", f"provider {ALICE}"),
     ("/jobs/99", "job 99"), ("/jobs/99/history", "job 99"), (f"/channels/{BOB}/{P2}", "channel"),
     (f"/receipts/{P1}/{ROOT2}", "receipt batch"), ("/no/such/route", "no route")],
)  # fmt: skip
def test_missing_is_404_with_a_clear_message(client: TestClient, path: str, words: str) -> None:
    body = error(client.get(path), 404)
    assert words in body["message"] and body["type"] == "not_found_error"


@pytest.mark.parametrize("path", ["/jobs/abc", "/providers/0x12", f"/channels/{ALICE}/nope", f"/receipts/{P1}/0x12"])
def test_malformed_path_is_400(client: TestClient, path: str) -> None:
    assert error(client.get(path), 400)["type"] == "invalid_request_error"


def test_job_history_is_its_events_in_order(client: TestClient) -> None:
    body = client.get("/jobs/5/history").json()
    assert body["job_id"] == 5
    assert [e["event"] for e in body["items"]] == ["JobCreated", "JobClaimed", "JobSubmitted", "JobDisputed"]
    assert body["items"][1]["args"] == {"jobId": 5, "provider": P1}
    assert set(body["items"][0]) == {"block_number", "log_index", "block_hash", "tx_hash", "contract", "event", "args"}


# -- finality ------------------------------------------------------------------------------------------
def test_status_is_pending_until_confirmed(seeded: Store, make_client) -> None:
    five, none = make_client(confirmations=5), make_client(confirmations=0)
    assert five.get("/jobs/8").json()["status"] == "pending"  # updated at 98 > 100 - 5
    assert five.get("/jobs/4").json()["status"] == "final"  # updated at 42
    assert five.get("/models/12").json()["status"] == "pending"
    assert none.get("/jobs/8").json()["status"] == "final"
    assert {i["status"] for i in none.get("/jobs").json()["items"]} == {"final"}
    deep = make_client(confirmations=60)  # finalized height 40: only rows updated at or below 40
    statuses = {i["key"]: i["status"] for i in deep.get("/models").json()["items"]}
    assert statuses["1"] == "final" and statuses["5"] == "final" and statuses["12"] == "pending"
    assert deep.get("/jobs/1").json()["status"] == "final" and deep.get("/jobs/3").json()["status"] == "pending"


def test_nothing_is_final_before_the_first_cursor(store: Store, make_client) -> None:
    chain = Chain()
    model(chain, 1, 1, ALICE)
    chain.commit(store, None)
    assert make_client(confirmations=0).get("/models/1").json()["status"] == "pending"


# -- signals -------------------------------------------------------------------------------------------
def test_signals_come_from_final_rows_only(client: TestClient) -> None:
    body = client.get("/signals", params={"now": NOW}).json()
    assert body["now"] == NOW and body["finalized_height"] == 95
    got = [(s["type"], s.get("job_id") or s["key"]) for s in body["items"]]
    assert got == [("finalizable", 4), ("finalizable", 5), ("refundable", 1), ("refundable", 3),
                   ("refundable", 9), ("withdrawal_requested", f"{ALICE}:{P1}")]  # fmt: skip
    # pending rows whose conditions hold never signal: job 8 (window over), job 13 (deadline passed),
    # channel Alice:P2 (withdrawal requested)
    assert 8 not in [s.get("job_id") for s in body["items"]] and 13 not in [s.get("job_id") for s in body["items"]]
    withdrawal = body["items"][-1]
    assert (withdrawal["payer"], withdrawal["provider"], withdrawal["unlock_at"]) == (ALICE, P1, NOW + 86400)


def test_signals_depend_on_now_and_confirmations(seeded: Store, make_client) -> None:
    early = make_client().get("/signals", params={"now": PAST - 1}).json()["items"]
    assert [s["type"] for s in early] == ["withdrawal_requested"]  # no deadline or window has passed yet
    late = make_client().get("/signals", params={"now": FUTURE}).json()["items"]
    assert [s.get("job_id") for s in late if s["type"] == "finalizable"] == [4, 5, 6]
    everything = make_client(confirmations=0).get("/signals", params={"now": NOW}).json()["items"]
    assert [s.get("job_id") for s in everything if s["type"] == "finalizable"] == [4, 5, 8]
    assert [s.get("job_id") for s in everything if s["type"] == "refundable"] == [1, 3, 9, 13]
    assert len([s for s in everything if s["type"] == "withdrawal_requested"]) == 2
    assert error(make_client().get("/signals", params={"now": "soon"}), 400)["param"] == "now"
    assert error(make_client().get("/signals", params={"foo": "1"}), 400)["code"] == "unknown_parameter"


def test_signals_use_the_clock_by_default(client: TestClient) -> None:
    body = client.get("/signals").json()
    assert body["now"] > NOW  # the real clock is far past the test's NOW
    assert {s.get("job_id") for s in body["items"] if s["type"] == "finalizable"} == {4, 5, 6}


# -- events --------------------------------------------------------------------------------------------
def test_events_page_by_position_and_filter_by_name(client: TestClient, seeded: Store) -> None:
    total = seeded.count_events(CHAIN)
    seen, after = [], None
    while True:
        response = client.get("/events", params={"limit": 7, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        seen += [(e["block_number"], e["log_index"]) for e in response.json()["items"]]
        after = response.json()["next_after"]
        if after is None:
            break
    assert len(seen) == total and seen == sorted(set(seen))
    created = client.get("/events", params={"name": "JobCreated", "limit": 500}).json()["items"]
    assert len(created) == 13 and {e["event"] for e in created} == {"JobCreated"}
    assert error(client.get("/events", params={"after": "12"}), 400)["code"] == "malformed_after"
    assert error(client.get("/events", params={"limit": 9999}), 400)["message"] == "limit must be 1..500"


# -- stream --------------------------------------------------------------------------------------------
def test_stream_once_sends_every_change_and_resumes_after_last_event_id(client: TestClient, seeded: Store) -> None:
    response = client.get("/stream", params={"once": "true"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    last = seeded.last_change_id(CHAIN)
    assert [e["id"] for e in events] == sorted({e["id"] for e in events}) and events[-1]["id"] == last
    assert len(events) == len(seeded.changes_since(CHAIN, 0, 10_000))
    assert {e["event"] for e in events} == {"upsert"}
    job4 = [e for e in events if e["data"]["kind"] == "job" and e["data"]["key"] == "4"][0]
    assert job4["data"]["doc"]["state"] == "SUBMITTED" and job4["data"]["id"] == job4["id"]

    middle = events[len(events) // 2]["id"]
    resumed = sse(client.get("/stream?once=true", headers={"Last-Event-ID": str(middle)}).text)
    assert [e["id"] for e in resumed] == [e["id"] for e in events if e["id"] > middle]
    by_query = sse(client.get("/stream", params={"once": "true", "after": middle}).text)
    assert [e["id"] for e in by_query] == [e["id"] for e in resumed]
    header_wins = sse(client.get("/stream?once=true&after=0", headers={"Last-Event-ID": str(last)}).text)
    assert header_wins == []


@pytest.mark.parametrize(("headers", "params"), [({"Last-Event-ID": "abc"}, {}), ({"Last-Event-ID": "-1"}, {}),
                                                 ({}, {"after": "x"}), ({}, {"colour": "red"})])  # fmt: skip
def test_stream_refuses_malformed_positions(client: TestClient, headers, params) -> None:
    body = error(client.get("/stream", params={"once": "true", **params}, headers=headers), 400)
    assert body["code"] in ("malformed_event_id", "unknown_parameter")


def test_stream_pushes_new_changes_live_with_heartbeats(seeded: Store, make_client) -> None:
    client = make_client(poll_interval=0.02, heartbeat_interval=0.05)
    last = seeded.last_change_id(CHAIN)
    with client.stream("GET", "/stream", headers={"Last-Event-ID": str(last)}) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        heartbeat = False
        for line in lines:  # idle: only heartbeats
            if line == ": heartbeat":
                heartbeat = True
                break
        assert heartbeat
        chain = Chain()
        model(chain, 101, 77, BOB)
        chain.commit(seeded, Cursor(101, "0xcc", 101))
        received: list[str] = []
        for line in lines:
            if line.startswith((":", "retry:")) or (line == "" and not received):
                continue  # heartbeats and the blank lines that end them
            received.append(line)
            if line == "":
                break
        [event] = sse("\n".join(received) + "\n")
        assert event["id"] == last + 1 and event["event"] == "upsert"
        assert event["data"]["key"] == "77" and event["data"]["doc"]["owner"] == BOB
