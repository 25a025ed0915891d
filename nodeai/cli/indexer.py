"""A small client of the indexer's HTTP API (``python -m nodeai.indexer``), for list commands.

Lists come from the indexer because the chain cannot answer "all jobs of
this requester" without scanning every log; single items that a
transaction depends on are read from the chain itself.
"""

from __future__ import annotations

from typing import Any, Iterator

import requests

from nodeai.cli.errors import ServiceUnavailable, UserError

START_HINT = ("start it with `python -m nodeai.indexer --deployments deployments/<chain id>.json --rpc-url URL`, "
              "or point the CLI at a running one with --indexer-url / NODEAI_INDEXER_URL")


class IndexerClient:
    def __init__(self, base_url: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        try:
            reply = self.session.get(url, params={k: v for k, v in (params or {}).items() if v is not None},
                                     timeout=self.timeout)  # fmt: skip
        except requests.RequestException as exc:
            raise ServiceUnavailable(f"the indexer at {self.base_url} did not answer ({type(exc).__name__})",
                                     START_HINT) from None  # fmt: skip
        if reply.ok:
            return reply.json()
        # NOTE: the indexer answers OpenAI-shaped errors {"error": {"message", "type", "param", "code"}}.
        try:
            message = reply.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = reply.text[:200]
        if reply.status_code in (400, 404):
            raise UserError(f"indexer: {message}")
        raise ServiceUnavailable(f"indexer answered {reply.status_code} for {path}: {message}",
                                 "check the indexer's log; retry when /ready says ready")

    def pages(self, path: str, params: dict[str, Any], limit: int) -> Iterator[dict[str, Any]]:
        """Items of a list endpoint, following ``next_cursor``, at most ``limit`` of them."""
        cursor: str | None = None
        seen = 0
        while seen < limit:
            page = self.get(path, {**params, "limit": min(100, limit - seen), "cursor": cursor})
            for item in page["items"]:
                yield item
                seen += 1
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return

    def close(self) -> None:
        self.session.close()
