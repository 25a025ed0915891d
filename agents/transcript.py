"""The hash-chained transcript of an agent job (pure: hashing and verification, no I/O).

Every event of a job (model call with its prompt hash and output, parsed
action, policy decision, tool call with its result, approval, finish) is an
entry. Each entry stores the hash of the entry before it, and its own hash is
``sha256`` of its canonical JSON (sorted keys, no spaces, UTF-8) without the
``hash`` field. The first entry chains to the hash of the header (job id, spec
CID, input hash). The **root** is the hash of the last entry: it is what the
provider submits on chain with the result, so any edit, insertion, removal or
reordering of an entry, or of the header, changes the root.

`verify_transcript` recomputes the chain and raises `TranscriptInvalid` naming
the first bad entry; given the root from chain it also catches a transcript
whose hashes were all recomputed after an edit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from nodeai.agents.errors import TranscriptInvalid

TRANSCRIPT_VERSION = 1


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON (bytes as 0x-hex, tuples as lists, keys as text, non-finite floats as text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=canonical) if isinstance(value, (set, frozenset)) else items
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    return str(value)


def canonical(value: Any) -> str:
    """Canonical JSON text of a JSON value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_hex(data: bytes | str) -> str:
    return "0x" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return sha256_hex(canonical({k: v for k, v in entry.items() if k != "hash"}))


def header_hash(header: Mapping[str, Any]) -> str:
    return sha256_hex(canonical(dict(header)))


@dataclass
class Transcript:
    """An append-only, hash-chained list of entries."""

    header: dict[str, Any]
    entries: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def start(cls, *, job_id: str, agent: str, spec_cid: str | None, spec_hash: str, input_value: Any,
              started_at_ms: int) -> "Transcript":
        header = {
            "version": TRANSCRIPT_VERSION, "job_id": job_id, "agent": agent, "spec_cid": spec_cid,
            "spec_hash": spec_hash, "input_hash": sha256_hex(canonical(jsonable(input_value))),
            "started_at_ms": started_at_ms,
        }  # fmt: skip
        return cls(header)

    @property
    def root(self) -> str:
        return self.entries[-1]["hash"] if self.entries else header_hash(self.header)

    def append(self, kind: str, step: int, data: Mapping[str, Any], at_ms: int) -> dict[str, Any]:
        entry = {"seq": len(self.entries), "step": step, "kind": kind, "at_ms": at_ms, "data": jsonable(data),
                 "prev": self.root}  # fmt: skip
        entry["hash"] = entry_hash(entry)
        self.entries.append(entry)
        return entry

    def to_document(self) -> dict[str, Any]:
        return {"header": self.header, "entries": self.entries, "root": self.root}

    def to_bytes(self) -> bytes:
        """The canonical JSON that is pinned on IPFS."""
        return canonical(self.to_document()).encode()

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> "Transcript":
        """A transcript from its document, verified first (`TranscriptInvalid` otherwise)."""
        verify_transcript(document)
        return cls(dict(document["header"]), [dict(e) for e in document["entries"]])


def verify_transcript(document: Mapping[str, Any] | bytes | str, expected_root: str | None = None) -> str:
    """Recompute the chain of a transcript document; return its root.

    Raises `TranscriptInvalid` at the first entry whose hash, link or sequence
    number is wrong, when the stated root differs, or when ``expected_root``
    (e.g. the root submitted on chain) differs from the recomputed one.
    """
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TranscriptInvalid(None, f"not valid JSON: {exc}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("header"), Mapping) \
            or not isinstance(document.get("entries"), list):
        raise TranscriptInvalid(None, "a transcript is an object with 'header', 'entries' and 'root'")
    if document["header"].get("version") != TRANSCRIPT_VERSION:
        raise TranscriptInvalid(None, f"unsupported transcript version {document['header'].get('version')!r}")
    prev = header_hash(document["header"])
    for i, entry in enumerate(document["entries"]):
        if not isinstance(entry, Mapping):
            raise TranscriptInvalid(i, "entry is not an object")
        if entry.get("seq") != i:
            raise TranscriptInvalid(i, f"sequence number {entry.get('seq')!r}, expected {i} (entry removed or reordered)")
        if entry.get("prev") != prev:
            raise TranscriptInvalid(i, "does not link to the entry before it (an earlier entry or the header was changed)")
        try:
            recomputed = entry_hash(entry)
        except (TypeError, ValueError) as exc:
            raise TranscriptInvalid(i, f"not canonical JSON: {exc}") from None
        if entry.get("hash") != recomputed:
            raise TranscriptInvalid(i, f"content was changed after it was recorded (hash {entry.get('hash')} != {recomputed})")
        prev = recomputed
    if document.get("root") != prev:
        raise TranscriptInvalid(None, f"stated root {document.get('root')} differs from the recomputed root {prev}")
    if expected_root is not None and expected_root.lower() != prev:
        raise TranscriptInvalid(None, f"root {prev} differs from the expected root {expected_root} (the transcript was rewritten)")
    return prev


def root_bytes32(root: str) -> bytes:
    """A root as the 32 bytes a contract stores."""
    raw = bytes.fromhex(root.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"{root!r} is not a 32-byte hash")
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
