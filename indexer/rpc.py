"""JSON-RPC client of the indexer: several RPC URLs, checked, retried, failed over.

:class:`RpcPool` talks plain JSON-RPC over HTTP (one ``requests.Session``,
batch requests where they save round trips) to a list of URLs that must all
serve the same chain:

* ``verify()`` drops every URL that serves another chain id (the indexer must
  never mix two chains' logs into one view);
* ``block_number()`` asks every node for its head and marks a node that lags
  the best one by more than ``max_lag`` blocks: reads skip it until it catches
  up, because a node that has not imported a block answers ``eth_getLogs``
  for it with an empty list rather than an error;
* every request is retried a bounded number of times with exponential backoff
  on TRANSIENT, TIMEOUT and RATE_LIMITED errors, failing over to the next URL;
  TERMINAL errors raise at once, and range errors (too many results, range too
  large) raise at once too, for :func:`fetch_logs` to fetch fewer blocks.

:func:`fetch_logs` walks a block range with a
:class:`~nodeai.indexer.ranges.RangePlanner`, yielding each range's logs.

Not thread-safe: one pool per thread (or a lock around it).
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from nodeai.errors import ChainError, ChainIdMismatch
from nodeai.indexer.ranges import RangePlanner, RangeWalk, RpcErrorKind, classify_rpc_error, suggested_range

__all__ = ["ChainIdMismatchError", "RpcError", "RpcPool", "fetch_logs", "normalise_block", "normalise_log"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_ADVICE = {
    RpcErrorKind.TOO_MANY_RESULTS: "fetch fewer blocks per request (fetch_logs does so by itself)",
    RpcErrorKind.RANGE_TOO_LARGE: "fetch fewer blocks per request (fetch_logs does so by itself)",
    RpcErrorKind.TIMEOUT: "the node is too slow for this request: fetch fewer blocks, or add another RPC URL",
    RpcErrorKind.RATE_LIMITED: "the provider throttles this endpoint: add RPC URLs, raise the plan, or send fewer requests",
    RpcErrorKind.TRANSIENT: "the node is down, overloaded or behind: check it, or add another RPC URL",
    RpcErrorKind.TERMINAL: "the request is wrong or refused (API key, method, parameters): retrying will not help",
}


class RpcError(ChainError):
    """A JSON-RPC request failed; ``kind`` says whether to retry, shrink or give up.

    ``detail`` is the provider's own message (what :func:`suggested_range`
    reads), ``code`` its JSON-RPC code or HTTP status (``None``: no reply).
    """

    def __init__(
        self, kind: RpcErrorKind, detail: str, *, url: str | None = None, method: str | None = None,
        code: int | None = None,
    ):  # fmt: skip
        self.kind, self.detail, self.url, self.method, self.code = kind, detail, url, method, code
        where = f"{method or 'request'} on {url}" if url else (method or "request")
        coded = f", code {code}" if code is not None else ""
        super().__init__(f"{where} failed ({kind.value}{coded}): {detail}: {_ADVICE[kind]}")


class ChainIdMismatchError(ChainIdMismatch):
    """No RPC URL of a pool serves the expected chain (:class:`ChainIdMismatch` for several URLs)."""

    def __init__(self, expected: int, found: Mapping[str, int]):
        self.expected = expected
        self.found = dict(found)
        self.actual = next(iter(self.found.values()), -1)
        served = ", ".join(f"{url} serves chain id {chain_id}" for url, chain_id in self.found.items())
        # NOTE: ChainIdMismatch.__init__ words its message for one URL; this one names them all.
        ChainError.__init__(
            self,
            f"no RPC URL serves chain id {expected} ({served}): point the indexer at RPC URLs of chain {expected}",
        )


@dataclass
class _Node:
    url: str
    verified: bool = False  # its eth_chainId answered the expected id
    head: int | None = None  # its block number when last asked
    lagging: bool = False  # more than max_lag blocks behind the best head when last asked


def _int(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") or an int as an int."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16) if value[:2].lower() == "0x" else int(value)
    raise ValueError(f"not a quantity: {value!r}")


def _hex(value: Any) -> str:
    if not isinstance(value, str) or value[:2].lower() != "0x":
        raise ValueError(f"not a hex string: {value!r}")
    return value.lower()


def normalise_block(raw: Any) -> dict[str, Any]:
    """The header fields the indexer uses, with ints as ints and hashes in lower case."""
    if not isinstance(raw, dict):
        raise ValueError(f"not a block: {raw!r}")
    return {
        "number": _int(raw["number"]),
        "hash": _hex(raw["hash"]),
        "parentHash": _hex(raw["parentHash"]),
        "timestamp": _int(raw["timestamp"]),
        "logsBloom": _hex(raw["logsBloom"]),
    }


def normalise_log(raw: Any) -> dict[str, Any]:
    """A raw log with ints as ints and hex strings in lower case."""
    if not isinstance(raw, dict):
        raise ValueError(f"not a log: {raw!r}")
    return {
        "address": _hex(raw["address"]),
        "topics": [_hex(topic) for topic in raw["topics"]],
        "data": _hex(raw["data"]),
        "blockNumber": _int(raw["blockNumber"]),
        "blockHash": _hex(raw["blockHash"]),
        "logIndex": _int(raw["logIndex"]),
        "transactionHash": _hex(raw["transactionHash"]),
        "transactionIndex": _int(raw["transactionIndex"]),
        "removed": bool(raw.get("removed", False)),
    }


def _error_from_reply(error: Any, url: str, method: str) -> RpcError:
    """The RpcError for a JSON-RPC ``error`` object."""
    if not isinstance(error, dict):
        return RpcError(RpcErrorKind.TRANSIENT, f"malformed error {error!r}", url=url, method=method)
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    message = str(error.get("message", ""))
    data = error.get("data")
    # NOTE: thirdweb puts the useful text ("range 20000 is bigger than range
    # limit 2000") into `data` under a generic "invalid params".
    if isinstance(data, str) and data and data not in message:
        message = f"{message}: {data}"
    return RpcError(classify_rpc_error(code, message), message, url=url, method=method, code=code)


class RpcPool:
    """JSON-RPC over HTTP to several URLs of one chain, with retries, failover and lag detection.

    ``max_tries`` bounds the attempts of one request across all URLs; the
    delay before retrying a URL already tried for this request starts at
    ``backoff`` seconds and doubles up to ``max_backoff``. ``error_counts``
    counts every failed attempt by kind (for metrics).
    """

    def __init__(
        self, urls: Sequence[str], chain_id: int, *, max_lag: int = 8, timeout: float = 10.0, max_tries: int = 5,
        backoff: float = 0.05, max_backoff: float = 2.0, batch_size: int = 100,
        session: requests.Session | None = None, sleep: Callable[[float], None] = time.sleep,
    ):  # fmt: skip
        if not urls:
            raise ValueError("RpcPool needs at least one RPC URL")
        if max_tries < 1 or max_lag < 0 or batch_size < 1:
            raise ValueError(f"RpcPool needs max_tries >= 1, max_lag >= 0, batch_size >= 1, got {max_tries}, "
                             f"{max_lag}, {batch_size}")  # fmt: skip
        self.chain_id = chain_id
        self.max_lag, self.timeout, self.max_tries = max_lag, timeout, max_tries
        self.backoff, self.max_backoff, self.batch_size = backoff, max_backoff, batch_size
        self.error_counts: collections.Counter[RpcErrorKind] = collections.Counter()
        self.rejected: dict[str, int] = {}  # URL -> the other chain id it serves
        self._nodes = [_Node(url) for url in dict.fromkeys(urls)]
        self._cursor = 0  # index of the preferred node; moves on after a failure
        self._checked = False  # verify() ran once
        self._ids = itertools.count(1)
        self._own_session = session is None
        self._session = session or requests.Session()
        self._sleep = sleep

    # -- state ---------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The URLs still in the pool (the ones serving another chain are gone)."""
        return [node.url for node in self._nodes]

    @property
    def lagging(self) -> list[str]:
        """The URLs skipped for reads because their head lagged when last asked."""
        return [node.url for node in self._nodes if node.lagging]

    @property
    def heads(self) -> dict[str, int | None]:
        """Each URL's head when last asked (``None``: never answered)."""
        return {node.url: node.head for node in self._nodes}

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def __enter__(self) -> RpcPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------

    def _post(self, url: str, payload: Any, method: str) -> Any:
        """POST one JSON-RPC payload; the decoded reply, or an RpcError classified from the failure."""
        try:
            reply = self._session.post(url, json=payload, timeout=self.timeout)
        except requests.Timeout:
            raise RpcError(RpcErrorKind.TIMEOUT, f"no answer within {self.timeout} s", url=url, method=method) from None
        except requests.RequestException as exc:
            raise RpcError(RpcErrorKind.TRANSIENT, f"{type(exc).__name__}: {exc}", url=url, method=method) from None
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code != 200:
            # NOTE: QuickNode answers 413 and Alchemy 429 with a JSON-RPC error
            # body; its message says more than the status does.
            if isinstance(body, dict) and "error" in body:
                error = _error_from_reply(body["error"], url, method)
                if reply.status_code == 429:
                    raise RpcError(RpcErrorKind.RATE_LIMITED, error.detail, url=url, method=method, code=429)
                raise error
            text = reply.text.strip()[:200] or reply.reason
            kind = classify_rpc_error(reply.status_code, text)
            raise RpcError(kind, f"HTTP {reply.status_code}: {text}", url=url, method=method, code=reply.status_code)
        if body is None:
            raise RpcError(RpcErrorKind.TRANSIENT, f"not JSON: {reply.text[:200]!r}", url=url, method=method)
        return body

    def _quantity(self, url: str, method: str) -> int:
        """A parameterless method answering a quantity (eth_chainId, eth_blockNumber) on one URL, no retry."""
        value = self._request(url, method, [])
        try:
            return _int(value)
        except ValueError:
            raise RpcError(RpcErrorKind.TRANSIENT, f"not a quantity: {value!r}", url=url, method=method) from None

    def _request(self, url: str, method: str, params: Sequence[Any]) -> Any:
        """One JSON-RPC call to one URL, no retry."""
        request_id = next(self._ids)
        body = self._post(url, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}, method)
        return self._result(body, url, method, request_id)

    def _result(self, body: Any, url: str, method: str, request_id: int) -> Any:
        if not isinstance(body, dict):
            raise RpcError(RpcErrorKind.TRANSIENT, f"malformed reply {str(body)[:200]!r}", url=url, method=method)
        if body.get("error") is not None:
            raise _error_from_reply(body["error"], url, method)
        if "result" not in body or body.get("id") != request_id:
            raise RpcError(RpcErrorKind.TRANSIENT, f"malformed reply {str(body)[:200]!r}", url=url, method=method)
        return body["result"]

    def _batch_request(self, url: str, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """One JSON-RPC batch to one URL, no retry: the results in the order of ``calls``."""
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "2.0", "id": i, "method": m, "params": list(p)} for i, (m, p) in zip(ids, calls)]
        methods = ",".join(sorted({method for method, _ in calls}))
        body = self._post(url, payload, methods)
        if isinstance(body, dict) and body.get("error") is not None:
            raise _error_from_reply(body["error"], url, methods)  # the whole batch was refused
        if not isinstance(body, list):
            raise RpcError(RpcErrorKind.TRANSIENT, f"malformed batch reply {str(body)[:200]!r}", url=url,
                           method=methods)  # fmt: skip
        # NOTE: JSON-RPC 2.0 lets a server answer a batch in any order.
        by_id = {item.get("id"): item for item in body if isinstance(item, dict)}
        results = []
        for request_id, (method, _) in zip(ids, calls):
            item = by_id.get(request_id)
            if item is None:
                raise RpcError(RpcErrorKind.TRANSIENT, f"batch reply lacks id {request_id}", url=url, method=method)
            results.append(self._result(item, url, method, request_id))
        return results

    # -- chain id ------------------------------------------------------------

    def verify(self) -> None:
        """Check ``eth_chainId`` on every URL; drop those serving another chain.

        A URL that does not answer stays in the pool, unverified: it is checked
        again before its first use. Raises :class:`ChainIdMismatchError` when
        every URL serves another chain, and :class:`RpcError` when no URL
        serves the expected one (some did not answer).
        """
        self._checked = True
        unreachable: list[RpcError] = []
        for node in list(self._nodes):
            if node.verified:
                continue
            try:
                self._check_chain_id(node)
            except RpcError as err:
                self.error_counts[err.kind] += 1
                unreachable.append(err)
                log.warning("could not check the chain id of %s: %s", node.url, err)
        if any(node.verified for node in self._nodes):
            return
        if not self._nodes:
            raise ChainIdMismatchError(self.chain_id, self.rejected)
        served = "".join(f"; {url} serves chain id {chain_id}" for url, chain_id in self.rejected.items())
        failures = "; ".join(str(err) for err in unreachable)
        raise RpcError(
            RpcErrorKind.TRANSIENT,
            f"no RPC URL confirmed chain id {self.chain_id}: {failures}{served}",
            method="eth_chainId",
        )

    def _check_chain_id(self, node: _Node) -> bool:
        """Verify one node; ``False`` (and the node removed) when it serves another chain."""
        chain_id = self._quantity(node.url, "eth_chainId")
        if chain_id == self.chain_id:
            node.verified = True
            return True
        log.error("dropping RPC URL %s: it serves chain id %d, not %d", node.url, chain_id, self.chain_id)
        self.rejected[node.url] = chain_id
        self._nodes.remove(node)
        self._cursor = 0
        return False

    # -- retries and failover ------------------------------------------------

    def _candidates(self, min_head: int | None) -> list[_Node]:
        """Nodes to read from, the preferred one first.

        Nodes not lagging and not known to be below ``min_head``; when there
        is none, lagging nodes known to have ``min_head`` already (an old
        block is as good from a node that is behind).
        """
        count = len(self._nodes)
        ordered = [self._nodes[(self._cursor + i) % count] for i in range(count)]
        healthy = [
            node for node in ordered
            if not node.lagging and (min_head is None or node.head is None or node.head >= min_head)
        ]  # fmt: skip
        if healthy or min_head is None:
            return healthy
        return [node for node in ordered if node.head is not None and node.head >= min_head]

    def _execute(self, what: str, attempt: Callable[[str], T], *, min_head: int | None = None,
                 fail_fast: frozenset[RpcErrorKind] = frozenset()) -> T:  # fmt: skip
        """Run ``attempt(url)`` with retries, backoff and failover; see the class docstring.

        ``min_head``: the request needs this block (nodes known to be below it
        are skipped); ``fail_fast``: kinds to raise at once besides TERMINAL,
        TOO_MANY_RESULTS and RANGE_TOO_LARGE.
        """
        if not self._checked:
            self.verify()  # NOTE: never read from a URL whose chain id is unchecked
        stop = fail_fast | {RpcErrorKind.TERMINAL, RpcErrorKind.TOO_MANY_RESULTS, RpcErrorKind.RANGE_TOO_LARGE}
        tried: set[str] = set()
        failures: list[RpcError] = []
        delay = self.backoff
        refreshed = False
        while len(failures) < self.max_tries:
            candidates = self._candidates(min_head)
            if not candidates and min_head is not None and not refreshed and self._nodes:
                # NOTE: the known heads may be stale; ask once before giving up.
                refreshed = True
                self.block_number()
                candidates = self._candidates(min_head)
            if not candidates:
                break
            node = candidates[0]
            if node.url in tried:
                self._sleep(delay)  # every candidate failed once already: back off before the next round
                delay = min(self.max_backoff, delay * 2)
            tried.add(node.url)
            try:
                if not node.verified and not self._check_chain_id(node):
                    continue
                result = attempt(node.url)
            except RpcError as err:
                self.error_counts[err.kind] += 1
                log.info("%s failed on %s (%s): %s", what, node.url, err.kind.value, err.detail)
                if err.kind.retryable and node in self._nodes:
                    # NOTE: the next request (a retry, or a smaller range after a timeout) goes elsewhere first.
                    self._cursor = (self._nodes.index(node) + 1) % len(self._nodes)
                if err.kind in stop:
                    raise
                failures.append(err)
                continue
            if min_head is not None:
                node.head = max(node.head or 0, min_head)  # NOTE: it has served this block, so it has it
            return result
        if not self._nodes:
            raise ChainIdMismatchError(self.chain_id, self.rejected)
        if not failures:
            heads = ", ".join(f"{url}: {head}" for url, head in self.heads.items())
            missing = f"no RPC node has block {min_head} yet" if min_head is not None else "every RPC node lags"
            raise RpcError(RpcErrorKind.TRANSIENT, f"{missing} (heads {heads})", method=what)
        last = failures[-1]
        urls = ", ".join(dict.fromkeys(err.url or "?" for err in failures))
        raise RpcError(
            last.kind, f"gave up after {len(failures)} tries on {urls}; last: {last.detail}", url=last.url,
            method=what, code=last.code,
        ) from last  # fmt: skip

    # -- public reads --------------------------------------------------------

    def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """Any JSON-RPC method, with retries and failover; the raw ``result``."""
        return self._execute(method, lambda url: self._request(url, method, params))

    def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in JSON-RPC batches of ``batch_size``; raw results in the order of ``calls``.

        One failed call fails (and retries) its whole batch.
        """
        results: list[Any] = []
        for offset in range(0, len(calls), self.batch_size):
            chunk = calls[offset:offset + self.batch_size]
            results += self._execute("batch", lambda url: self._batch_request(url, chunk))
        return results

    def block_number(self) -> int:
        """The chain head: the highest block number among the nodes that answer.

        Also marks each answering node as lagging (skipped for reads) when it
        is more than ``max_lag`` blocks behind that head, or as caught up.
        """
        if not self._checked:
            self.verify()
        delay = self.backoff
        failures: list[RpcError] = []
        for _ in range(self.max_tries):
            heads: dict[str, int] = {}
            for node in list(self._nodes):
                try:
                    if not node.verified and not self._check_chain_id(node):
                        continue
                    heads[node.url] = self._quantity(node.url, "eth_blockNumber")
                except RpcError as err:
                    self.error_counts[err.kind] += 1
                    failures.append(err)
                    log.info("eth_blockNumber failed on %s (%s): %s", node.url, err.kind.value, err.detail)
            if heads:
                best = max(heads.values())
                for node in self._nodes:
                    if node.url not in heads:
                        continue  # NOTE: no answer, no news: keep what we knew
                    node.head = heads[node.url]
                    lagging = best - node.head > self.max_lag
                    if lagging != node.lagging:
                        log.warning("%s %s: head %d, best %d", node.url,
                                    "lags, skipped for reads" if lagging else "caught up", node.head, best)  # fmt: skip
                    node.lagging = lagging
                return best
            if not self._nodes:
                raise ChainIdMismatchError(self.chain_id, self.rejected)
            if any(err.kind is RpcErrorKind.TERMINAL for err in failures):
                break
            self._sleep(delay)
            delay = min(self.max_backoff, delay * 2)
        last = failures[-1]
        raise RpcError(last.kind, f"no node answered: {last.detail}", url=last.url, method="eth_blockNumber",
                       code=last.code) from last  # fmt: skip

    def get_block(self, number: int) -> dict[str, Any]:
        """The header of block ``number``: number, hash, parentHash, timestamp, logsBloom.

        A node without the block (it answers ``null``) is a TRANSIENT failure:
        it may be behind, so another node is tried.
        """
        return self._execute(f"eth_getBlockByNumber({number})", lambda url: self._block(url, number), min_head=number)

    def get_blocks(self, numbers: Sequence[int]) -> list[dict[str, Any]]:
        """Several headers in JSON-RPC batches (for a reorg walk-back), in the order of ``numbers``."""
        blocks: list[dict[str, Any]] = []
        for offset in range(0, len(numbers), self.batch_size):
            chunk = list(numbers[offset:offset + self.batch_size])
            if not chunk:
                continue
            blocks += self._execute(f"eth_getBlockByNumber x{len(chunk)}", lambda url: self._blocks(url, chunk),
                                    min_head=max(chunk))  # fmt: skip
        return blocks

    def _block(self, url: str, number: int) -> dict[str, Any]:
        return self._check_block(url, number, self._request(url, "eth_getBlockByNumber", [hex(number), False]))

    def _blocks(self, url: str, numbers: list[int]) -> list[dict[str, Any]]:
        raws = self._batch_request(url, [("eth_getBlockByNumber", [hex(n), False]) for n in numbers])
        return [self._check_block(url, number, raw) for number, raw in zip(numbers, raws)]

    @staticmethod
    def _check_block(url: str, number: int, raw: Any) -> dict[str, Any]:
        method = "eth_getBlockByNumber"
        if raw is None:
            raise RpcError(RpcErrorKind.TRANSIENT, f"block {number} not found (the node is behind, or it is not mined"
                           " yet)", url=url, method=method)  # fmt: skip
        try:
            block = normalise_block(raw)
        except (KeyError, ValueError) as exc:
            raise RpcError(RpcErrorKind.TRANSIENT, f"malformed block {number}: {exc}", url=url, method=method) from None
        if block["number"] != number:
            raise RpcError(RpcErrorKind.TRANSIENT, f"asked for block {number}, got {block['number']}", url=url,
                           method=method)  # fmt: skip
        return block

    def get_logs(
        self, from_block: int, to_block: int, addresses: Sequence[str], *, retry_timeouts: bool = False
    ) -> list[dict[str, Any]]:
        """The logs of ``addresses`` in blocks ``[from_block, to_block]``, normalised, in chain order.

        Raises :class:`RpcError` of kind TOO_MANY_RESULTS, RANGE_TOO_LARGE or
        (unless ``retry_timeouts``) TIMEOUT at once: a smaller range is the
        cure, see :func:`fetch_logs`. Only nodes known to have ``to_block``
        are asked: anvil, for one, clamps a range past its head silently.
        """
        if not 0 <= from_block <= to_block:
            raise ValueError(f"invalid block range [{from_block}, {to_block}]: pass 0 <= from_block <= to_block")
        if not addresses:
            # NOTE: to geth an empty address list means every contract.
            raise ValueError("get_logs needs at least one contract address")
        wanted = {address.lower() for address in addresses}
        params = [{"fromBlock": hex(from_block), "toBlock": hex(to_block), "address": sorted(wanted)}]

        def attempt(url: str) -> list[dict[str, Any]]:
            raw = self._request(url, "eth_getLogs", params)
            try:
                logs = [normalise_log(item) for item in raw]
            except (KeyError, TypeError, ValueError) as exc:
                raise RpcError(RpcErrorKind.TRANSIENT, f"malformed log: {exc}", url=url, method="eth_getLogs") from None
            for item in logs:
                # NOTE: a node answering with logs outside the filter is broken; another node may not be.
                if not from_block <= item["blockNumber"] <= to_block or item["address"] not in wanted:
                    raise RpcError(RpcErrorKind.TRANSIENT, f"log outside the filter: {item}", url=url,
                                   method="eth_getLogs")  # fmt: skip
            return sorted(logs, key=lambda item: (item["blockNumber"], item["logIndex"]))

        fail_fast = frozenset() if retry_timeouts else frozenset({RpcErrorKind.TIMEOUT})
        return self._execute(f"eth_getLogs({from_block}, {to_block})", attempt, min_head=to_block, fail_fast=fail_fast)


def fetch_logs(
    pool: RpcPool, planner: RangePlanner, start: int, end: int, addresses: Sequence[str],
    learned: Callable[[RangePlanner], None] | None = None,
) -> Iterator[tuple[int, int, list[dict[str, Any]]]]:
    """Fetch the logs of ``[start, end]``: one ``(from, to, logs)`` per successful range, in order.

    The ranges tile ``[start, end]`` exactly once. After a range error the
    planner shrinks (to the provider's suggestion when it makes one) and the
    same start is fetched again; other errors (the pool has already retried
    them) and a range error on a range that cannot shrink raise. A range of
    ``min_span`` blocks that times out is retried like any other request.
    ``learned`` receives the planner after every adjustment, so a caller keeps
    what it learnt (a provider's range cap) for its next call.
    """
    walk = RangeWalk(start, end, planner)
    while not walk.done:
        low, high = walk.current
        try:
            logs = pool.get_logs(low, high, addresses, retry_timeouts=not walk.can_shrink())
        except RpcError as err:
            if not err.kind.shrinks_range:
                raise
            if not walk.can_shrink():
                raise RpcError(
                    err.kind, f"blocks {low}..{high} cannot be split further ({err.detail}): use a provider without "
                    "this cap, or watch fewer contracts per request", url=err.url, method=err.method, code=err.code,
                ) from err  # fmt: skip
            walk = walk.after_error(err.kind, err.detail)
            if learned:
                learned(walk.planner)
            log.info("eth_getLogs %d..%d: %s; next span %d", low, high, err.kind.value, walk.planner.span)
            continue
        walk = walk.after_success(len(logs))
        if learned:
            learned(walk.planner)
        yield low, high, logs
