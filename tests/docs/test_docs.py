"""Checks that keep docs/ true to the code.

* every relative link and image of docs/*.md resolves, anchors included;
* docs/openapi/*.json equal a fresh export from the real FastAPI apps;
* protocol.md names every event (with all its fields), every external function
  and every revert message of contracts/, the Job struct in storage order, and
  the EIP-712 type strings the contracts hash;
* the operator guide lists every option of the daemon's config, and its
  generated option tables equal a fresh generation;
* the docs index links every page.

Run: ``.venv/bin/pytest tests/docs -q -p no:cacheprovider`` (a few seconds).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONTRACTS = ROOT / "contracts"
PAGES = sorted(DOCS.rglob("*.md"))
NOT_INDEXED = {"README.md"}


# -- markdown helpers ---------------------------------------------------------------------------------------
_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines outside fenced code blocks, with inline code removed (links in code are not links)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, _INLINE_CODE.sub("", line)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text().splitlines():
        if _FENCE.match(line.strip()):
            fenced = not fenced
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in _prose_lines(path.read_text()):
        for pattern in (_LINK, _HTML_SRC):
            for target in pattern.findall(line):
                yield number, target


# -- links --------------------------------------------------------------------------------------------------
def test_docs_exist() -> None:
    names = {p.name for p in PAGES}
    for required in ("README.md", "quickstart.md", "architecture.md", "protocol.md", "operator-guide.md", "api.md",
                     "comparison.md"):
        assert required in names, f"docs/{required} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_and_images_resolve(page: Path) -> None:
    broken = []
    for number, target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{page.name}:{number}: {target} -> {resolved} does not exist")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{page.name}:{number}: {target}: no heading with the anchor #{anchor} in {resolved.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_index_links_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    linked = {target.partition("#")[0] for _, target in _links(DOCS / "README.md")}
    missing = [p.name for p in DOCS.glob("*.md") if p.name not in NOT_INDEXED and p.name not in linked]
    assert not missing, f"docs/README.md does not link {missing}"
    assert "img/explorer.png" in index


# -- OpenAPI ------------------------------------------------------------------------------------------------
def _export_module():
    spec = importlib.util.spec_from_file_location("export_openapi", ROOT / "scripts" / "export_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_openapi_files_equal_a_fresh_export() -> None:
    exports = _export_module().exports()
    assert set(exports) == {"indexer.json", "gateway.json"}
    stale = [name for name, text in exports.items()
             if not (DOCS / "openapi" / name).is_file() or (DOCS / "openapi" / name).read_text() != text]
    assert not stale, f"docs/openapi/{stale} differ from the apps: run `.venv/bin/python scripts/export_openapi.py`"


def test_openapi_documents_list_the_main_routes() -> None:
    import json

    indexer = json.loads((DOCS / "openapi" / "indexer.json").read_text())["paths"]
    gateway = json.loads((DOCS / "openapi" / "gateway.json").read_text())["paths"]
    for path in ("/models", "/providers", "/jobs", "/jobs/{job_id}/history", "/channels", "/receipts", "/signals",
                 "/events", "/stream", "/health", "/ready", "/metrics"):
        assert path in indexer, path
    for path in ("/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/nodeai/vouchers",
                 "/v1/nodeai/receipts/{request_hash}", "/health", "/metrics"):
        assert path in gateway, path
    api = (DOCS / "api.md").read_text()
    for path in [*indexer, *gateway]:
        route = re.sub(r"\{[^}]+\}", "{", path).split("{")[0].rstrip("/") or path
        assert route in api, f"api.md does not mention {path}"


# -- the contracts ------------------------------------------------------------------------------------------
def _sources() -> dict[str, str]:
    files = sorted(CONTRACTS.glob("*.vy")) + sorted((CONTRACTS / "modules").glob("*.vy"))
    return {p.relative_to(CONTRACTS).as_posix(): p.read_text() for p in files}


def _events() -> dict[str, list[str]]:
    events: dict[str, list[str]] = {}
    for source in _sources().values():
        for name, body in re.findall(r"^event (\w+):\n((?:[ \t]+.*\n?)+)", source, re.MULTILINE):
            events[name] = re.findall(r"^\s+(\w+):", body, re.MULTILINE)
    return events


def _functions() -> dict[str, set[str]]:
    """External functions, public getters and exported module functions, per contract file."""
    found: dict[str, set[str]] = {}
    for name, source in _sources().items():
        names = set(re.findall(r"^@external\n(?:@\w+\n)*def (\w+)\(", source, re.MULTILINE))
        names |= set(re.findall(r"^(\w+): public\(", source, re.MULTILINE))
        block = re.search(r"^exports:\s*(\([^)]*\)|[^\n]*)", source, re.MULTILINE)
        if block:
            names |= {item.split(".")[-1] for item in re.findall(r"[\w.]+", block.group(1))
                      if "." in item and not item.endswith("__interface__")}
        found[name] = names
    return found


def _reverts() -> set[str]:
    messages = set()
    for source in _sources().values():
        messages |= set(re.findall(r'assert [^\n]*?,\s*"([a-z_]+: [^"]+)"', source))
    return messages


PROTOCOL = (DOCS / "protocol.md").read_text() if (DOCS / "protocol.md").is_file() else ""


def test_contract_sources_parse() -> None:
    """Guards the parsers below: a regex that silently matched nothing would make the other tests pass."""
    assert len(_events()) >= 30
    assert {"createJob", "finalize", "redeemBatch", "commitReceipts", "registerModel", "jobCommitment", "owner",
            "transfer_ownership", "eip712Domain", "setProtocolFee"} <= set().union(*_functions().values())
    assert len(_reverts()) >= 70


@pytest.mark.parametrize("event", sorted(_events()))
def test_protocol_documents_event_with_its_fields(event: str) -> None:
    rows = [line for line in PROTOCOL.splitlines() if line.startswith(f"| `{event}` |")]
    assert rows, f"protocol.md has no event table row for {event}"
    missing = [field for field in _events()[event] if f"`{field}`" not in rows[0]]
    assert not missing, f"protocol.md's row for {event} lacks the fields {missing}"


@pytest.mark.parametrize("name", sorted({(f, n) for f, names in _functions().items() for n in names}),
                         ids=lambda item: f"{item[0]}:{item[1]}")
def test_protocol_documents_external_function(name: tuple[str, str]) -> None:
    contract, function = name
    assert f"`{function}(" in PROTOCOL, f"protocol.md does not document {contract}'s external function {function}()"


def test_protocol_lists_every_revert_message() -> None:
    missing = sorted(m for m in _reverts() if m not in PROTOCOL)
    assert not missing, f"protocol.md lacks the revert messages {missing}"


def test_protocol_documents_the_job_struct_in_storage_order() -> None:
    source = (CONTRACTS / "JobMarket.vy").read_text()
    body = re.search(r"^struct Job:\n((?:[ \t]+.*\n)+)", source, re.MULTILINE)
    assert body is not None
    fields = re.findall(r"^\s+(\w+):", body.group(1), re.MULTILINE)
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", PROTOCOL, re.MULTILINE)
    assert [name for _, name in rows] == fields, "protocol.md's Job struct table differs from JobMarket.vy's Job"
    assert [int(i) for i, _ in rows] == list(range(len(fields)))


def test_protocol_states_the_eip712_types_the_code_hashes() -> None:
    escrow = (CONTRACTS / "InferenceEscrow.vy").read_text()
    voucher = re.search(r'VOUCHER_TYPEHASH: constant\(bytes32\) = keccak256\(\s*"([^"]+)"', escrow)
    assert voucher is not None
    assert f"`{voucher.group(1)}`" in PROTOCOL
    from nodeai.chain.vouchers import DOMAIN_NAME, DOMAIN_VERSION
    from nodeai.serving.receipts import RECEIPT_DOMAIN_NAME, RECEIPT_DOMAIN_VERSION, RECEIPT_TYPES

    receipt_type = "Receipt(" + ",".join(f"{f['type']} {f['name']}" for f in RECEIPT_TYPES["Receipt"]) + ")"
    assert f"`{receipt_type}`" in PROTOCOL
    for name, version in ((DOMAIN_NAME, DOMAIN_VERSION), (RECEIPT_DOMAIN_NAME, RECEIPT_DOMAIN_VERSION)):
        assert f'`"{name}"`, `"{version}"`' in PROTOCOL
    registry = (CONTRACTS / "ReceiptRegistry.vy").read_text()
    struct = re.search(r"^struct Receipt:\n((?:[ \t]+.*\n)+)", registry, re.MULTILINE)
    assert struct is not None
    assert re.findall(r"^\s+(\w+):", struct.group(1), re.MULTILINE) == [f["name"] for f in RECEIPT_TYPES["Receipt"]]


# -- the operator guide ---------------------------------------------------------------------------------------
def _node_options() -> list[str]:
    from pydantic import BaseModel

    from nodeai.node.config import NodeConfig

    def walk(model: type[BaseModel], prefix: str) -> Iterator[str]:
        for name, field in model.model_fields.items():
            key = field.alias or name
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, f"{prefix}{key}.")
                continue
            yield f"{prefix}{key}"
            args = getattr(annotation, "__args__", ())
            if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                yield from walk(args[0], f"{prefix}{key}[].")

    return list(walk(NodeConfig, ""))


def test_operator_guide_lists_every_node_option() -> None:
    guide = (DOCS / "operator-guide.md").read_text()
    options = _node_options()
    assert len(options) > 50
    missing = [option for option in options if f"`{option}`" not in guide]
    assert not missing, (f"docs/operator-guide.md does not list {missing}: "
                         "run `.venv/bin/python -m tests.docs.config_tables --write`")


def test_operator_guide_option_tables_are_fresh() -> None:
    from tests.docs.config_tables import GUIDE, render

    current = GUIDE.read_text()
    assert render(current) == current, (
        "the option tables of docs/operator-guide.md differ from the config models: "
        "run `.venv/bin/python -m tests.docs.config_tables --write`")


@pytest.mark.parametrize("document", sorted((DOCS / "openapi").glob("*.json")), ids=lambda p: p.name)
def test_openapi_refs_resolve(document: Path) -> None:
    import json

    spec = json.loads(document.read_text())
    assert '"$ref"' in document.read_text(), f"{document.name} has no $ref at all: the check would prove nothing"
    # NOTE: the exporter's own check (it refuses to write a document with a dangling reference), run on the files
    dangling = sorted(set(_export_module().dangling_refs(spec)))
    assert not dangling, (f"docs/openapi/{document.name} refers to {dangling}, which it does not define: "
                          "fix scripts/export_openapi.py and run it")
    assert "$defs" not in json.dumps(spec), f"{document.name} keeps a nested $defs (hoist it into components.schemas)"
