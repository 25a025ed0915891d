"""The explorer's routes on the indexer: the page and its files, the deployments file, the stream
position, provider liveness and the read-only RPC relay.

Most tests talk HTTP to the real indexer process of the ``explorer`` fixture; the
argument checks of ``mount_explorer`` and the relay's failure path use an in-process
app on a real SQLite store.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from eth_utils import keccak
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # NOTE: starlette 1.x nags to swap httpx for httpx2 at import; httpx is what is installed.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from nodeai.chain.deployments import Deployment
from nodeai.indexer.api import create_app
from nodeai.indexer.explorer import READ_METHODS, ExplorerError, mount_explorer
from nodeai.indexer.metrics import IndexerMetrics
from nodeai.indexer.store import open_store

from .conftest import Explorer

pytestmark = pytest.mark.integration


def _rpc(explorer: Explorer, body: Any) -> requests.Response:
    return requests.post(explorer.url + "rpc", json=body, timeout=10)


def test_root_and_bare_prefix_redirect_to_the_page(explorer: Explorer) -> None:
    for path in ("", "explorer"):
        reply = requests.get(explorer.api + path, allow_redirects=False, timeout=10)
        assert reply.status_code == 307 and reply.headers["location"] == "/explorer/"
    page = requests.get(explorer.url, timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="app.js">' in page.text


def test_page_files_are_served_with_their_types(explorer: Explorer) -> None:
    for name, kind in [("app.js", "javascript"), ("chain.js", "javascript"), ("style.css", "text/css"),
                       ("vendor/ethers-6.17.0.min.js", "javascript"), ("vendor/ethers-LICENSE.md", "")]:  # fmt: skip
        reply = requests.get(explorer.url + name, timeout=10)
        assert reply.status_code == 200, name
        assert kind in reply.headers["content-type"], (name, reply.headers["content-type"])
    missing = requests.get(explorer.url + "nope.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_deployments_json_is_the_deployments_file(explorer: Explorer) -> None:
    served = requests.get(explorer.url + "deployments.json", timeout=10).json()
    assert served == json.loads(explorer.deployments_file.read_text())
    assert served["contracts"]["JobMarket"]["address"] == explorer.market.market.address
    assert any(item.get("name") == "createJob" for item in served["contracts"]["JobMarket"]["abi"])


def test_position_names_the_last_change_of_the_stream(explorer: Explorer) -> None:
    position = requests.get(explorer.url + "api/position", timeout=10).json()
    assert position["chain_id"] == explorer.deployment.chain_id and position["confirmations"] == 2
    assert position["rpc_relay"] is True and position["liveness"] is True
    assert position["finalized_height"] == position["head"] - 2
    # Everything up to change_id is in the log; the stream resumes strictly after it.
    replay = requests.get(explorer.api + "stream", params={"once": "true"}, timeout=10).text
    ids = [int(line[4:]) for line in replay.splitlines() if line.startswith("id: ")]
    assert position["change_id"] in ids and position["change_id"] <= max(ids)


def test_liveness_probes_each_registered_endpoint(explorer: Explorer) -> None:
    report = requests.get(explorer.url + "api/liveness", timeout=30).json()
    by_address = {item["address"]: item for item in report["items"]}
    activity = explorer.activity
    assert set(by_address) == set(activity.providers)
    live, dead = by_address[activity.live_provider], by_address[activity.dead_provider]
    assert live["live"] is True and live["latency_ms"] >= 0 and live["endpoint"] == activity.providers[activity.live_provider]
    assert dead["live"] is False and dead["reason"] == "unreachable"


def test_rpc_relay_answers_reads(explorer: Explorer) -> None:
    registry = explorer.market.receipts
    root = explorer.activity.tree.root
    data = registry.encode_abi("isCommitted", args=[explorer.activity.live_provider, root])
    reply = _rpc(explorer, {"jsonrpc": "2.0", "id": 7, "method": "eth_call",
                            "params": [{"to": registry.address, "data": data}, "latest"]})  # fmt: skip
    assert reply.status_code == 200
    body = reply.json()
    assert body["id"] == 7 and int(body["result"], 16) == 1  # committed
    # The chain's own answer, not a cached one: a root nobody committed reads as not committed.
    data = registry.encode_abi("isCommitted", args=[explorer.activity.live_provider, keccak(text="unknown root")])
    unknown = _rpc(explorer, {"jsonrpc": "2.0", "id": 8, "method": "eth_call",
                              "params": [{"to": registry.address, "data": data}, "latest"]}).json()  # fmt: skip
    assert int(unknown["result"], 16) == 0
    chain_id = _rpc(explorer, [{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}]).json()
    assert int(chain_id[0]["result"], 16) == explorer.deployment.chain_id


@pytest.mark.parametrize("method", ["eth_sendRawTransaction", "eth_sendTransaction", "anvil_setBalance", "debug_traceCall"])
def test_rpc_relay_refuses_anything_but_reads(explorer: Explorer, method: str) -> None:
    assert method not in READ_METHODS
    reply = _rpc(explorer, {"jsonrpc": "2.0", "id": 3, "method": method, "params": []})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == -32601 and f"{method} is not relayed" in error["message"] and "wallet" in error["message"]


def test_rpc_relay_refuses_malformed_bodies(explorer: Explorer) -> None:
    not_json = requests.post(explorer.url + "rpc", data=b"{oops", headers={"Content-Type": "application/json"}, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == -32700
    too_many = _rpc(explorer, [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(21)])
    assert too_many.status_code == 400 and "1..20 requests" in too_many.json()["error"]["message"]
    no_method = _rpc(explorer, {"jsonrpc": "2.0", "id": 1})
    assert no_method.status_code == 400 and "with a method" in no_method.json()["error"]["message"]
    huge = requests.post(explorer.url + "rpc", data=b" " * (64 * 1024 + 1), timeout=10)
    assert huge.status_code == 413


# -- in-process app: argument checks and the relay's failure path ------------------------------------
@pytest.fixture
def app_for(tmp_path: Path) -> Iterator[Any]:
    stores = []

    def make(chain_id: int) -> Any:
        url = f"sqlite:///{tmp_path}/explorer-{len(stores)}.db"
        store = open_store(url)
        store.migrate()
        stores.append(store)
        return create_app(lambda: open_store(url), chain_id, 2, IndexerMetrics())

    yield make
    for store in stores:
        store.close()


def test_mount_refuses_a_deployment_of_another_chain(explorer: Explorer, app_for) -> None:
    with pytest.raises(ExplorerError, match="chain id 31337 but the indexer serves chain id 5"):
        mount_explorer(app_for(5), explorer.deployment)


def test_mount_refuses_a_missing_or_broken_deployments_file(app_for, tmp_path: Path) -> None:
    with pytest.raises(ExplorerError, match="no deployments file .*deploy first"):
        mount_explorer(app_for(31337), tmp_path / "absent.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"chain_id": 31337}')
    with pytest.raises(ExplorerError, match="is not a deployments file"):
        mount_explorer(app_for(31337), broken)
    partial = Deployment(chain_id=31337, deploy_block=1, deployer="0x" + "11" * 20, params={}, contracts={})
    with pytest.raises(ExplorerError, match="has no JobMarket, InferenceEscrow, ReceiptRegistry"):
        mount_explorer(app_for(31337), partial)


def test_mount_needs_an_indexer_app(explorer: Explorer) -> None:
    from fastapi import FastAPI

    with pytest.raises(ExplorerError, match="create_app"):
        mount_explorer(FastAPI(), explorer.deployment)


def test_relay_reports_an_unreachable_node_without_its_url(explorer: Explorer, app_for) -> None:
    secret_url = "http://127.0.0.1:1/v3/secret-api-key"
    app = app_for(31337)
    mount_explorer(app, explorer.deployment, rpc_urls=[secret_url], probe_providers=False)
    with TestClient(app) as client:
        reply = client.post("/explorer/rpc", json={"jsonrpc": "2.0", "id": 9, "method": "eth_blockNumber"})
        assert reply.status_code == 502
        assert reply.json()["id"] == 9 and "did not answer" in reply.json()["error"]["message"]
        assert "secret" not in reply.text
        assert client.get("/explorer/api/liveness").json() == {"enabled": False, "items": []}
        position = client.get("/explorer/api/position").json()
        assert position["change_id"] == 0 and position["indexed_height"] is None and position["liveness"] is False


def test_without_rpc_urls_the_page_is_told_to_read_through_the_wallet(explorer: Explorer, app_for) -> None:
    app = app_for(31337)
    mount_explorer(app, explorer.deployments_file)  # a path works as well as a Deployment
    with TestClient(app) as client:
        assert client.get("/explorer/api/position").json()["rpc_relay"] is False
        reply = client.post("/explorer/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"})
        assert reply.status_code == 404 and "connect a wallet" in reply.json()["error"]["message"]
        # The API's own routes are untouched by the mount.
        assert client.get("/health").json() == {"status": "ok"}
        assert "/explorer/deployments.json" in client.get("/openapi.json").json()["paths"]

