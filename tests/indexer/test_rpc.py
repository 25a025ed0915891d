"""RpcPool and fetch_logs against a real anvil, a closed port, and scripted JSON-RPC servers on loopback."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from eth_utils import keccak

from nodeai.chain.anvil import LOCAL_CHAIN_ID, Anvil, free_port
from nodeai.errors import ChainIdMismatch, NodeAIError
from nodeai.indexer.ranges import RangePlanner, RpcErrorKind
from nodeai.indexer.rpc import ChainIdMismatchError, RpcError, RpcPool, fetch_logs

pytestmark = pytest.mark.integration
K = RpcErrorKind
PING_TOPIC = "0x" + keccak(text="Ping(uint256)").hex()


@dataclass
class Http:
    """A raw HTTP answer (status and body text) instead of a JSON-RPC reply."""

    status: int
    body: str


Handler = Callable[[list[Any]], Any]  # params -> {"result": ...} | {"error": ...} | Http


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # NOTE: a client that timed out has closed its socket; writing the late answer fails, as it should


class FakeNode:
    """A JSON-RPC server on 127.0.0.1 whose answers a test scripts per method.

    Unscripted methods go to ``upstream`` (a real anvil) when there is one;
    ``eth_chainId`` and (when ``head`` is set) ``eth_blockNumber`` answer from
    the attributes. ``calls`` lists every method asked, in order.
    """

    def __init__(self, chain_id: int = LOCAL_CHAIN_ID, upstream: str | None = None, head: int | None = None):
        self.chain_id, self.upstream, self.head = chain_id, upstream, head
        self.handlers: dict[str, Handler] = {}
        self.calls: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def answer(self, request: dict[str, Any]) -> Any:
        method, params = request["method"], request.get("params", [])
        self.calls.append(method)
        if method in self.handlers:
            reply = self.handlers[method](params)
        elif method == "eth_chainId":
            reply = {"result": hex(self.chain_id)}
        elif method == "eth_blockNumber" and self.head is not None:
            reply = {"result": hex(self.head)}
        elif self.upstream:
            reply = requests.post(self.upstream, json=request, timeout=5).json()
        else:
            reply = {"error": {"code": -32601, "message": "Method not found"}}
        if isinstance(reply, Http):
            return reply
        return {"jsonrpc": "2.0", "id": request["id"], **{k: v for k, v in reply.items() if k in ("result", "error")}}

    def start(self) -> FakeNode:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if isinstance(payload, list):
                    replies = [fake.answer(item) for item in payload]
                    status, body = 200, json.dumps(replies)
                else:
                    reply = fake.answer(payload)
                    status, body = (reply.status, reply.body) if isinstance(reply, Http) else (200, json.dumps(reply))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> FakeNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def error(code: int, message: str, data: Any = None) -> Handler:
    body = {"code": code, "message": message} | ({"data": data} if data is not None else {})
    return lambda params: {"error": body}


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


def rpc(url: str, method: str, params: list[Any]) -> Any:
    reply = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=5).json()
    assert "error" not in reply, reply
    return reply["result"]


def emit_ping(url: str, value: int) -> tuple[str, int]:
    """Deploy a contract whose constructor emits Ping(value) (LOG1): (its address, its block)."""
    # PUSH1 value PUSH1 0 MSTORE PUSH32 topic PUSH1 32 PUSH1 0 LOG1 STOP
    code = f"0x60{value:02x}600052 7f{PING_TOPIC[2:]} 60206000a1 00".replace(" ", "")
    sender = rpc(url, "eth_accounts", [])[0]
    tx = rpc(url, "eth_sendTransaction", [{"from": sender, "data": code, "gas": hex(100_000)}])
    deadline = time.monotonic() + 10
    # NOTE: anvil answers eth_sendTransaction before its automine has stored the receipt
    while (receipt := rpc(url, "eth_getTransactionReceipt", [tx])) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert receipt is not None, f"{tx} was not mined within 10 s"
    return receipt["contractAddress"], int(receipt["blockNumber"], 16)


@pytest.fixture(scope="module")
def pings(anvil) -> dict[str, Any]:
    """Ten Ping logs, one per contract, with empty blocks between them."""
    emitted: list[tuple[str, int, int]] = []
    for value in range(10):
        rpc(anvil.url, "anvil_mine", [hex(3 + value)])
        address, block = emit_ping(anvil.url, value)
        emitted.append((address.lower(), block, value))
    return {"emitted": emitted, "head": int(rpc(anvil.url, "eth_blockNumber", []), 16)}


def make_pool(urls: list[str], **kwargs: Any) -> tuple[RpcPool, list[float]]:
    sleeps: list[float] = []
    kwargs.setdefault("sleep", sleeps.append)
    return RpcPool(urls, LOCAL_CHAIN_ID, **kwargs), sleeps


# -- a real chain -----------------------------------------------------------------------------------------------


def test_reads_on_anvil(anvil, pings):
    pool, _ = make_pool([anvil.url])
    with pool:
        pool.verify()
        head = pool.block_number()
        assert head == pings["head"]
        block = pool.get_block(head)
        parent = pool.get_block(head - 1)
        assert block["number"] == head and isinstance(block["timestamp"], int)
        assert block["parentHash"] == parent["hash"] and block["hash"].startswith("0x") and len(block["hash"]) == 66
        assert len(block["logsBloom"]) == 2 + 512
        assert pool.get_blocks([head - 1, head]) == [parent, block]  # one batch
        assert pool.call("eth_chainId") == hex(LOCAL_CHAIN_ID)
        assert pool.batch([("eth_chainId", []), ("eth_blockNumber", [])]) == [hex(LOCAL_CHAIN_ID), hex(head)]
        assert not pool.error_counts


def test_get_logs_on_anvil_normalises_and_filters(anvil, pings):
    emitted = pings["emitted"]
    addresses = [address for address, _, _ in emitted]
    pool, _ = make_pool([anvil.url])
    with pool:
        pool.block_number()
        logs = pool.get_logs(0, pings["head"], addresses)
        assert [(log["address"], log["blockNumber"], int(log["data"], 16)) for log in logs] == emitted
        first = logs[0]
        assert first["topics"] == [PING_TOPIC] and first["logIndex"] == 0 and first["removed"] is False
        assert isinstance(first["transactionIndex"], int) and len(first["transactionHash"]) == 66
        assert pool.get_logs(emitted[3][1], emitted[3][1], [addresses[3].upper().replace("0X", "0x")]) == [logs[3]]
        assert pool.get_logs(0, emitted[0][1] - 1, addresses) == []  # blocks without logs
        with pytest.raises(ValueError, match="at least one contract address"):
            pool.get_logs(0, 1, [])
        with pytest.raises(ValueError, match="from_block <= to_block"):
            pool.get_logs(5, 4, addresses)


def test_get_logs_skips_a_node_known_to_be_below_the_range(anvil, pings):
    # NOTE: anvil answers a range past its head with the logs it has: a node
    # behind would silently drop logs, so the pool only asks nodes that have to_block.
    with FakeNode(upstream=anvil.url, head=pings["head"] - 3) as behind:
        pool, _ = make_pool([behind.url, anvil.url], max_lag=100)
        with pool:
            assert pool.block_number() == pings["head"] and pool.lagging == []
            behind.calls.clear()
            addresses = [address for address, _, _ in pings["emitted"]]
            assert len(pool.get_logs(0, pings["head"], addresses)) == 10
            assert pool.get_block(pings["head"])["number"] == pings["head"]
            assert "eth_getLogs" not in behind.calls and "eth_getBlockByNumber" not in behind.calls
            pool.get_block(pings["head"] - 3)
            assert behind.calls == ["eth_getBlockByNumber"]  # it has that one


def test_missing_block_is_transient_and_retried(anvil, pings):
    pool, sleeps = make_pool([anvil.url])
    with pool:
        with pytest.raises(RpcError, match="not found") as caught:
            pool.get_block(pings["head"] + 1_000)  # head unknown to the pool: anvil answers null
        assert caught.value.kind is K.TRANSIENT
        assert pool.error_counts == {K.TRANSIENT: 5}
        assert sleeps == [0.05, 0.1, 0.2, 0.4]  # exponential backoff between the 5 tries


def test_a_missing_block_on_one_node_is_read_from_another(anvil, pings):
    with FakeNode(upstream=anvil.url) as empty:
        empty.handlers["eth_getBlockByNumber"] = lambda params: {"result": None}
        pool, sleeps = make_pool([empty.url, anvil.url])
        with pool:
            assert pool.get_block(pings["head"])["number"] == pings["head"]
            assert pool.error_counts == {K.TRANSIENT: 1} and sleeps == []  # failover needs no wait


# -- fetch_logs against providers with caps ---------------------------------------------------------------------


def capped(anvil_url: str, max_blocks: int, message: Callable[[int, int], str], code: int) -> Handler:
    """eth_getLogs that refuses ranges wider than max_blocks with the provider's message, else asks anvil."""

    def handler(params: list[Any]) -> Any:
        low, high = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
        if high - low + 1 > max_blocks:
            return {"error": {"code": code, "message": message(low, high)}}
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": params}
        return requests.post(anvil_url, json=request, timeout=5).json()

    return handler


def collect(pool: RpcPool, planner: RangePlanner, end: int, addresses: list[str]) -> tuple[list[tuple[int, int]], list]:
    ranges, logs = [], []
    for low, high, batch in fetch_logs(pool, planner, 0, end, addresses):
        ranges.append((low, high))
        logs += batch
    return ranges, logs


def assert_tiles(ranges: list[tuple[int, int]], end: int) -> None:
    assert ranges[0][0] == 0 and ranges[-1][1] == end
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))


def test_fetch_logs_splits_on_a_result_cap(anvil, pings):
    head = pings["head"]
    addresses = [address for address, _, _ in pings["emitted"]]
    with FakeNode(upstream=anvil.url) as geth:
        geth.handlers["eth_getLogs"] = capped(anvil.url, 7, lambda lo, hi: "query returned more than 10000 results", -32005)
        pool, _ = make_pool([geth.url])
        with pool:
            pool.block_number()
            ranges, logs = collect(pool, RangePlanner(initial_span=64, max_span=64), head, addresses)
    assert_tiles(ranges, head)
    assert all(high - low + 1 <= 7 for low, high in ranges)
    assert [(log["address"], log["blockNumber"]) for log in logs] == [(a, b) for a, b, _ in pings["emitted"]]
    assert pool.error_counts[K.TOO_MANY_RESULTS] >= 3


def test_fetch_logs_follows_suggested_ranges_and_learns_a_span_cap(anvil, pings):
    head = pings["head"]
    addresses = [address for address, _, _ in pings["emitted"]]
    with FakeNode(upstream=anvil.url) as alchemy, FakeNode(upstream=anvil.url) as quicknode:
        alchemy.handlers["eth_getLogs"] = capped(
            anvil.url, 5, lambda lo, hi: f"Log response size exceeded. ... this block range should work: [{lo:#x}, {lo + 4:#x}]",
            -32602,
        )  # fmt: skip
        quicknode.handlers["eth_getLogs"] = capped(anvil.url, 6, lambda lo, hi: "eth_getLogs is limited to a 6 range", -32614)
        for node, errors in ((alchemy, K.TOO_MANY_RESULTS), (quicknode, K.RANGE_TOO_LARGE)):
            pool, _ = make_pool([node.url])
            with pool:
                pool.block_number()
                ranges, logs = collect(pool, RangePlanner(initial_span=50, max_span=50), head, addresses)
            assert_tiles(ranges, head)
            assert len(logs) == 10
            if errors is K.RANGE_TOO_LARGE:
                assert pool.error_counts == {K.RANGE_TOO_LARGE: 1}  # learnt once, never probed again
                assert {high - low + 1 for low, high in ranges[:-1]} == {6}
            else:
                assert ranges[0] == (0, 4)  # the suggestion, not a halving
                assert pool.error_counts[K.TOO_MANY_RESULTS] >= 1


def test_fetch_logs_raises_when_one_block_is_over_the_cap(anvil, pings):
    address, block, _ = pings["emitted"][0]
    with FakeNode(upstream=anvil.url) as node:
        node.handlers["eth_getLogs"] = error(-32005, "query returned more than 10000 results")
        pool, _ = make_pool([node.url])
        with pool, pytest.raises(RpcError, match="cannot be split further") as caught:
            pool.block_number()
            list(fetch_logs(pool, RangePlanner(initial_span=4), block, block + 3, [address]))
    assert caught.value.kind is K.TOO_MANY_RESULTS
    assert node.calls.count("eth_getLogs") == 3  # 4 blocks, 2, 1: then nothing left to split


# -- failover, retries, classification --------------------------------------------------------------------------


def test_a_closed_port_fails_over_to_a_live_node(anvil, pings):
    dead = f"http://127.0.0.1:{free_port()}"
    pool, sleeps = make_pool([dead, anvil.url])
    with pool:
        pool.verify()  # the dead URL stays, unverified, for when it comes back
        assert pool.urls == [dead, anvil.url]
        assert pool.block_number() == pings["head"]
        assert pool.call("eth_blockNumber") == hex(pings["head"])
        assert pool.error_counts[K.TRANSIENT] >= 2 and sleeps == []
    only_dead, _ = make_pool([dead])
    with only_dead, pytest.raises(RpcError, match=f"no RPC URL confirmed chain id {LOCAL_CHAIN_ID}.*{dead}") as caught:
        only_dead.verify()
    assert caught.value.kind is K.TRANSIENT


def test_failover_when_a_verified_node_goes_down(anvil, pings):
    node = FakeNode(upstream=anvil.url).start()
    try:
        pool, sleeps = make_pool([node.url, anvil.url])
        with pool:
            pool.verify()
            assert pool.call("eth_blockNumber") == hex(pings["head"])
            assert node.calls[-1] == "eth_blockNumber"
            node.stop()
            assert pool.call("eth_blockNumber") == hex(pings["head"])
            assert pool.call("eth_blockNumber") == hex(pings["head"])  # straight to the live one now
            assert pool.error_counts == {K.TRANSIENT: 1} and sleeps == []
    finally:
        node.stop()


def test_rate_limit_is_retried_with_backoff():
    answers = iter([Http(429, "Too Many Requests"), Http(429, '{"jsonrpc":"2.0","id":1,"error":{"code":429,'
                    '"message":"Your app has exceeded its compute units per second capacity."}}'), {"result": "0x7"}])  # fmt: skip
    with FakeNode() as node:
        node.handlers["eth_gasPrice"] = lambda params: next(answers)
        pool, sleeps = make_pool([node.url])
        with pool:
            assert pool.call("eth_gasPrice") == "0x7"
            assert pool.error_counts == {K.RATE_LIMITED: 2}
            assert sleeps == [0.05, 0.1]


def test_retries_are_bounded():
    with FakeNode() as node:
        node.handlers["eth_gasPrice"] = lambda params: Http(502, "<html>Bad Gateway</html>")
        pool, sleeps = make_pool([node.url], max_tries=3, max_backoff=0.08)
        with pool, pytest.raises(RpcError, match="gave up after 3 tries") as caught:
            pool.call("eth_gasPrice")
        assert caught.value.kind is K.TRANSIENT and caught.value.code == 502
        assert node.calls.count("eth_gasPrice") == 3 and sleeps == [0.05, 0.08]
        assert isinstance(caught.value, NodeAIError)


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (error(-32601, "Method not found"), K.TERMINAL),
        (error(-32005, "query returned more than 10000 results. Try with this block range [0x1, 0x2]."), K.TOO_MANY_RESULTS),
        (error(-32602, "invalid params", "range 20000 is bigger than range limit 2000"), K.RANGE_TOO_LARGE),  # thirdweb
        (lambda params: Http(413, json.dumps({"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32614, "message": "eth_getLogs is limited to a 10,000 range"}})), K.RANGE_TOO_LARGE),  # QuickNode
        (lambda params: Http(401, "invalid API key"), K.TERMINAL),
    ],
)  # fmt: skip
def test_errors_that_retrying_cannot_fix_raise_at_once(anvil, pings, reply, kind):
    with FakeNode(upstream=anvil.url) as node:
        node.handlers["eth_getLogs"] = reply
        pool, sleeps = make_pool([node.url, anvil.url])
        with pool, pytest.raises(RpcError) as caught:
            pool.get_logs(0, 10, [pings["emitted"][0][0]])
        assert caught.value.kind is kind and caught.value.url == node.url
        assert node.calls.count("eth_getLogs") == 1 and pool.error_counts == {kind: 1} and sleeps == []


def test_timeouts(anvil, pings):
    def slow(params: list[Any]) -> Any:
        time.sleep(0.4)
        return {"result": []}

    with FakeNode(upstream=anvil.url) as node:
        node.handlers["eth_getLogs"] = slow
        node.handlers["eth_gasPrice"] = slow
        pool, sleeps = make_pool([node.url], timeout=0.1, max_tries=2)
        with pool:
            with pytest.raises(RpcError) as caught:
                pool.get_logs(0, 10, [pings["emitted"][0][0]])  # a smaller range is the cure: at once
            assert caught.value.kind is K.TIMEOUT and pool.error_counts == {K.TIMEOUT: 1}
            with pytest.raises(RpcError, match="gave up after 2 tries"):
                pool.call("eth_gasPrice")  # anything else is retried
            assert pool.error_counts == {K.TIMEOUT: 3} and sleeps == [0.05]


# -- chain id ---------------------------------------------------------------------------------------------------


def test_a_url_of_another_chain_is_dropped(anvil, pings, caplog):
    with FakeNode(chain_id=1, upstream=anvil.url) as mainnet:
        pool, _ = make_pool([mainnet.url, anvil.url])
        with pool, caplog.at_level(logging.ERROR, logger="nodeai.indexer.rpc"):
            assert pool.block_number() == pings["head"]  # verifies first, by itself
            assert pool.urls == [anvil.url] and pool.rejected == {mainnet.url: 1}
            assert f"dropping RPC URL {mainnet.url}: it serves chain id 1, not {LOCAL_CHAIN_ID}" in caplog.text
            pool.get_block(pings["head"])
            assert mainnet.calls == ["eth_chainId"]  # never read from


def test_no_url_of_the_expected_chain():
    with FakeNode(chain_id=1) as mainnet, FakeNode(chain_id=8453) as base:
        urls = [mainnet.url, base.url]
        pool, _ = make_pool(urls)
        with pool, pytest.raises(ChainIdMismatchError) as caught:
            pool.verify()
    message = str(caught.value)
    assert f"{urls[0]} serves chain id 1" in message and f"{urls[1]} serves chain id 8453" in message
    assert f"no RPC URL serves chain id {LOCAL_CHAIN_ID}" in message
    assert isinstance(caught.value, ChainIdMismatch) and caught.value.found == {urls[0]: 1, urls[1]: 8453}


# -- lag --------------------------------------------------------------------------------------------------------


def test_a_lagging_node_is_skipped_until_it_catches_up(anvil, pings):
    head = pings["head"]
    with FakeNode(upstream=anvil.url, head=head - 20) as slow:
        pool, _ = make_pool([slow.url, anvil.url], max_lag=8)
        with pool:
            assert pool.block_number() == head
            assert pool.lagging == [slow.url] and pool.heads == {slow.url: head - 20, anvil.url: head}
            slow.calls.clear()
            pool.get_block(10)
            pool.call("eth_gasPrice")
            assert slow.calls == []  # first in the list, but skipped
            slow.head = head - 8  # within max_lag
            assert pool.block_number() == head and pool.lagging == []
            slow.calls.clear()
            pool.call("eth_gasPrice")
            assert slow.calls == ["eth_gasPrice"]  # trusted again
