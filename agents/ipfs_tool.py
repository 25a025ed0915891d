"""IPFS tool: get and put content by CID through the provider's `ArtifactStore`.

``get`` returns only content that matches its CID (the store recomputes the CID
of what it fetched); ``put`` pins what the agent wrote and returns its CID.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from nodeai.agents.errors import ToolArgumentError, ToolFailure
from nodeai.agents.spec import IpfsToolConfig
from nodeai.agents.tools import Tool, ToolContext, function
from nodeai.agents.transcript import b64
from nodeai.errors import NodeAIError


class ContentStore(Protocol):
    """The part of ``nodeai.ipfs.ArtifactStore`` the runtime uses."""

    def add_bytes(self, data: bytes, *, pin: bool = True) -> str: ...

    def get_bytes(self, cid: str, *, timeout: float = 60.0) -> bytes: ...


class IpfsTool(Tool):
    """Content-addressed storage: get by CID (verified), put (pinned)."""

    name = "ipfs"

    def __init__(self, config: IpfsToolConfig, store: ContentStore):
        self.config = config
        self._tool_name = config.name
        self.store = store

    @function("Get content by CID (verified against the CID): text when it is UTF-8, else base64")
    def get(self, ctx: ToolContext, cid: str) -> dict[str, Any]:
        where = f"{self.tool_name}.get"
        try:
            data = self.store.get_bytes(cid, timeout=self.config.timeout_s)
        except (TimeoutError, LookupError) as exc:  # NOTE: ArtifactNotFoundError: no peer had it (yet)
            raise ToolFailure(where, f"{cid} not found within {self.config.timeout_s:g} s: {exc}", retryable=True) from None
        except ValueError as exc:  # NOTE: CidMismatchError and InvalidCidError: retrying cannot help
            raise ToolFailure(where, str(exc)) from None
        except (OSError, NodeAIError) as exc:
            raise ToolFailure(where, f"IPFS failed: {exc}", retryable=True) from None
        if len(data) > self.config.max_bytes:
            raise ToolFailure(where, f"{cid} holds {len(data):,} bytes, more than the limit of {self.config.max_bytes:,}")
        out: dict[str, Any] = {"cid": cid, "bytes": len(data)}
        try:
            out["text"] = data.decode("utf-8")
        except UnicodeDecodeError:
            out["base64"] = b64(data)
        return out

    @function("Store text (or a JSON value) on IPFS, pinned; returns its CID", effect="write")
    def put(self, ctx: ToolContext, text: str | None = None, data: Any = None) -> dict[str, Any]:
        where = f"{self.tool_name}.put"
        if (text is None) == (data is None):
            raise ToolArgumentError(where, "pass exactly one of text (a string) or data (a JSON value)")
        payload = text.encode() if text is not None else json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        if len(payload) > self.config.max_bytes:
            raise ToolArgumentError(where, f"{len(payload):,} bytes is more than the limit of {self.config.max_bytes:,}")
        try:
            cid = self.store.add_bytes(payload, pin=True)
        except (OSError, NodeAIError) as exc:
            raise ToolFailure(where, f"storing failed: {exc}", retryable=True) from None
        return {"cid": cid, "bytes": len(payload)}
