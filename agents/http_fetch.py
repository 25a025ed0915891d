"""HTTP fetch tool: allowed domains only, bounded size and time, every redirect re-checked.

Redirects are followed by hand, one hop at a time, and each hop's host goes
through the policy (``ctx.check_domain``) before it is contacted, so an allowed
site cannot bounce the agent to a disallowed one. The body is read in chunks
and cut at ``max_bytes`` (``truncated: true``); the whole exchange, redirects
included, must finish within ``timeout_s``.

# NOTE: the allow-list is by host name. An allowed name that resolves to an
# internal address is the operator's business (run providers with egress rules).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import httpx

from nodeai.agents.errors import ToolArgumentError, ToolFailure
from nodeai.agents.spec import HttpToolConfig
from nodeai.agents.tools import Tool, ToolContext, function

REDIRECTS = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")
FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class HttpTool(Tool):
    """GET or HEAD a URL on one of the policy's allowed domains."""

    name = "http"

    def __init__(self, config: HttpToolConfig):
        self.config = config
        self._tool_name = config.name
        # NOTE: identity encoding and raw reads, so the size limit counts bytes on the wire
        # and a small compressed body cannot inflate past it.
        self._client = httpx.Client(follow_redirects=False, trust_env=False, headers={"accept-encoding": "identity"})

    @function("Fetch a URL (GET or HEAD) on an allowed domain; returns status, content type and the body as text")
    def fetch(self, ctx: ToolContext, url: str, method: Literal["GET", "HEAD"] = "GET",
              headers: dict[str, str] = {}) -> dict[str, Any]:  # noqa: B006  # fmt: skip
        where = f"{self.tool_name}.fetch"
        bad = sorted(h for h in headers if h.lower() in FORBIDDEN_HEADERS)
        if bad:
            raise ToolArgumentError(where, f"headers {', '.join(bad)} cannot be set")
        current = self._parse(where, url)
        deadline = time.monotonic() + self.config.timeout_s
        hops: list[str] = []
        for _ in range(self.config.max_redirects + 1):
            ctx.check_domain(current.host)
            left = deadline - time.monotonic()
            if left <= 0:
                raise ToolFailure(where, f"timed out after {self.config.timeout_s:g} s", retryable=True)
            try:
                with self._client.stream(method, current, headers=headers, timeout=httpx.Timeout(left)) as reply:
                    if reply.status_code in REDIRECTS and "location" in reply.headers:
                        hops.append(str(current))
                        current = self._parse(where, str(current.join(reply.headers["location"])))
                        continue
                    if reply.status_code in RETRYABLE_STATUS:
                        raise ToolFailure(where, f"{current} answered HTTP {reply.status_code}", retryable=True)
                    body, truncated = self._read(where, reply, deadline)
                    return self._result(current, reply, body, truncated, hops)
            except httpx.TimeoutException:
                raise ToolFailure(where, f"{current.host} did not answer within {self.config.timeout_s:g} s",
                                  retryable=True) from None  # fmt: skip
            except httpx.TransportError as exc:
                raise ToolFailure(where, f"cannot reach {current.host}: {type(exc).__name__}: {exc}", retryable=True) from None
        raise ToolFailure(where, f"more than {self.config.max_redirects} redirects (from {url})")

    def _parse(self, where: str, url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ToolArgumentError(where, f"{url!r} is not a URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ToolArgumentError(where, f"{url!r}: only http:// and https:// URLs with a host can be fetched")
        return parsed

    def _read(self, where: str, reply: httpx.Response, deadline: float) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        for chunk in reply.iter_raw():
            if time.monotonic() > deadline:
                raise ToolFailure(where, f"body not received within {self.config.timeout_s:g} s", retryable=True)
            chunks.append(chunk)
            size += len(chunk)
            if size >= self.config.max_bytes:
                # NOTE: stop reading at once: a huge body must not reach memory
                return b"".join(chunks)[: self.config.max_bytes], True
        return b"".join(chunks), False

    @staticmethod
    def _result(url: httpx.URL, reply: httpx.Response, body: bytes, truncated: bool, hops: list[str]) -> dict[str, Any]:
        content_type = reply.headers.get("content-type", "")
        out: dict[str, Any] = {"url": str(url), "status": reply.status_code, "content_type": content_type,
                               "bytes": len(body), "truncated": truncated}  # fmt: skip
        if hops:
            out["redirected_from"] = hops
        if any(t in content_type for t in TEXT_TYPES) or not content_type:
            out["text"] = body.decode(reply.charset_encoding or "utf-8", errors="replace")
        else:
            out["base64"] = base64.b64encode(body).decode()
        return out

    def close(self) -> None:
        self._client.close()
