"""HTTP fetch against real servers on 127.0.0.1.

The allowed domain is ``localhost`` and the disallowed one ``127.0.0.1``: both
reach the same loopback server, so the only thing that differs is the host name
the policy sees, exactly what an allow-list must decide on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeai.agents import AgentRuntime, load_spec
from nodeai.agents.errors import PolicyDenied, ToolArgumentError, ToolFailure
from nodeai.agents.http_fetch import HttpTool
from nodeai.agents.runtime import _require_domain
from nodeai.agents.spec import AgentSpec, HttpToolConfig
from nodeai.agents.tools import ToolContext
from tests.agents.conftest import Site, reply

pytestmark = pytest.mark.integration


def http_spec(rules: list[dict[str, Any]], *, timeout_s: float = 5.0, max_bytes: int = 1_000,
              rate_limits: dict[str, Any] | None = None) -> AgentSpec:  # fmt: skip
    return load_spec({
        "spec_version": 1, "name": "web-reader",
        "tools": [{"type": "http", "timeout_s": timeout_s, "max_bytes": max_bytes, "max_redirects": 3}],
        "planner": {"kind": "rules", "rules": rules or [{"id": "done", "finish": "done"}]},
        "policy": {"domains": ["localhost"], "tool_retries": 2, "retry_backoff_s": 0.01, "rate_limits": rate_limits or {}},
    })  # fmt: skip


def context(spec: AgentSpec) -> ToolContext:
    return ToolContext("job", spec.name, 0, "job:0", spec.policy, None, None, lambda host: _require_domain(spec, host))


def fetch(spec: AgentSpec, url: str) -> dict[str, Any]:
    config = spec.tools[0]
    assert isinstance(config, HttpToolConfig)
    tool = HttpTool(config)
    try:
        return tool.invoke("fetch", {"url": url}, context(spec))
    finally:
        tool.close()


def test_allowed_domain_is_fetched_and_redirects_are_rechecked(site: Site) -> None:
    site.routes["/price"] = reply(200, b'{"eth": 3000}', "application/json")
    site.routes["/hop"] = reply(302, headers={"Location": "/price"})
    site.routes["/escape"] = reply(302, headers={"Location": site.url("127.0.0.1", "/secret")})
    site.routes["/secret"] = reply(200, b"internal")
    spec = http_spec([])

    got = fetch(spec, site.url("localhost", "/price"))
    assert got["status"] == 200 and got["text"] == '{"eth": 3000}' and got["truncated"] is False
    hopped = fetch(spec, site.url("localhost", "/hop"))
    assert hopped["text"] == '{"eth": 3000}' and hopped["redirected_from"] == [site.url("localhost", "/hop")]

    with pytest.raises(PolicyDenied, match="host '127.0.0.1' is not in the allowed domains"):
        fetch(spec, site.url("127.0.0.1", "/price"))
    with pytest.raises(PolicyDenied, match="host '127.0.0.1'"):
        fetch(spec, site.url("localhost", "/escape"))
    assert "/secret" not in site.hits  # NOTE: the disallowed hop was never contacted
    assert site.hits.count("/price") == 2


def test_size_limit_and_bad_urls(site: Site) -> None:
    site.routes["/big"] = reply(200, b"x" * 50_000)
    got = fetch(http_spec([], max_bytes=1_000), site.url("localhost", "/big"))
    assert got["bytes"] == 1_000 and got["truncated"] is True and got["text"] == "x" * 1_000
    for bad in ("file:///etc/passwd", "ftp://localhost/x", "not a url"):
        with pytest.raises(ToolArgumentError):
            fetch(http_spec([]), bad)


def test_http_timeout_is_retried_then_reported_in_the_job(site: Site, tmp_path: Path) -> None:
    def slow(handler: Any) -> None:
        site.release.wait(5)  # NOTE: longer than the tool's 0.3 s; released at teardown
        reply(200, b"late")(handler)

    site.routes["/slow"] = slow
    spec = http_spec([
        {"id": "get", "call": "http.fetch", "args": {"url": site.url("localhost", "/slow")}, "save_as": "page"},
        {"id": "done", "finish": "${page.text}"},
    ], timeout_s=0.3)  # fmt: skip
    runtime = AgentRuntime(tmp_path / "agents.db")
    result = runtime.run(spec, "read the page", job_id="slow-site")
    assert result.status == "failed"
    assert "did not answer within 0.3 s after 3 attempts" in result.reason
    assert site.hits.count("/slow") == 3
    attempts = [e["data"] for e in runtime.transcript("slow-site")["entries"] if e["kind"] == "tool"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3] and all(a["retryable"] for a in attempts)


def test_overloaded_server_is_retried_and_disallowed_domain_is_refused_in_a_job(site: Site, tmp_path: Path) -> None:
    answers = iter([reply(503), reply(200, b"fresh")])
    site.routes["/flaky"] = lambda handler: next(answers)(handler)
    spec = http_spec([
        {"id": "a", "call": "http.fetch", "args": {"url": site.url("localhost", "/flaky")}, "save_as": "a"},
        {"id": "b", "call": "http.fetch", "args": {"url": site.url("127.0.0.1", "/flaky")}, "save_as": "b",
         "on_error": "continue"},
        {"id": "done", "finish": {"a": "${a.text}", "b": "${b.error}"}},
    ])  # fmt: skip
    runtime = AgentRuntime(tmp_path / "agents.db")
    result = runtime.run(spec, "read", job_id="mixed")
    assert result.status == "succeeded", result.reason
    assert result.output["a"] == "fresh"
    assert result.output["b"].startswith("policy denied (policy.domains): host '127.0.0.1'")
    assert site.hits == ["/flaky", "/flaky"]
    denials = [e["data"] for e in runtime.transcript("mixed")["entries"] if e["kind"] == "policy" and e["data"]["verdict"] == "deny"]
    assert [d["rule"] for d in denials] == ["policy.domains"]


def test_rate_limit_spaces_calls_out(site: Site, tmp_path: Path) -> None:
    site.routes["/tick"] = reply(200, b"ok")
    spec = http_spec([
        {"id": f"t{i}", "call": "http.fetch", "args": {"url": site.url("localhost", "/tick")}} for i in range(3)
    ] + [{"id": "done", "finish": "ok"}], rate_limits={"http.fetch": {"calls": 2, "per_s": 0.5}})  # fmt: skip
    runtime = AgentRuntime(tmp_path / "agents.db")
    assert runtime.run(spec, "tick", job_id="ticks").status == "succeeded"
    waits = [e["data"] for e in runtime.transcript("ticks")["entries"] if e["kind"] == "policy" and e["data"]["verdict"] == "wait"]
    assert waits and waits[0]["rule"] == "policy.rate_limits.http.fetch"
    calls = runtime.store.recent_calls("web-reader", ["http.fetch"], 0)["http.fetch"]
    assert len(calls) == 3 and calls[2] - calls[0] >= 0.5  # NOTE: ordering of recorded starts, not a timing bound
    assert site.hits == ["/tick"] * 3


def test_tool_failure_messages_are_clear(site: Site) -> None:
    with pytest.raises(ToolFailure, match="cannot reach localhost"):
        fetch(http_spec([]), "http://localhost:1/")
