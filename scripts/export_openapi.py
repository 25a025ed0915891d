"""Export the OpenAPI documents of the indexer and the gateway into docs/openapi/.

    .venv/bin/python scripts/export_openapi.py            # write docs/openapi/indexer.json and gateway.json
    .venv/bin/python scripts/export_openapi.py --check    # exit 1 when a file differs from a fresh export

Both documents come from the real FastAPI application factories, built the
way their entry points build them:

* indexer: ``nodeai.indexer.api.create_app`` plus ``nodeai.indexer.explorer.mount_explorer``
  (what ``python -m nodeai.indexer`` serves), for chain id 31337 and 12
  confirmations (the command's defaults; both appear in the description);
* gateway: ``nodeai.serving.gateway.create_app`` (what
  ``python -m nodeai.serving.gateway`` serves).

No route reads anything while the schema is built, so the apps get stand-ins
for what they would only touch per request: a store factory that is never
called, an engine that serves nothing, an in-memory gateway store and a
throwaway key. ``tests/docs/test_docs.py`` runs the export and compares it
with the committed files, so the docs cannot drift from the code.

Each document is made self-contained before it is written: a request schema
that a route declares itself (``openapi_extra``, from pydantic's
``model_json_schema``) carries its sub-models in a local ``$defs`` while
referring to them as ``#/components/schemas/Name``; those ``$defs`` are moved
into ``components.schemas``, and every ``$ref`` is checked to resolve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "openapi"
CHAIN_ID = 31337
CONFIRMATIONS = 12
# NOTE: any valid secp256k1 key: it only signs receipts nobody asks for while the schema is built.
_THROWAWAY_KEY = "0x" + "11" * 32
_ZERO = "0x" + "00" * 20


def _never_called() -> Any:
    raise RuntimeError("the OpenAPI export opens no database")


def indexer_schema() -> dict[str, Any]:
    """The indexer's OpenAPI document, with the explorer's routes as ``python -m nodeai.indexer`` mounts them."""
    from nodeai.chain.deployments import Deployment
    from nodeai.indexer.api import create_app
    from nodeai.indexer.explorer import mount_explorer
    from nodeai.indexer.metrics import IndexerMetrics

    app = create_app(_never_called, CHAIN_ID, CONFIRMATIONS, IndexerMetrics())
    contracts = {name: {"address": _ZERO, "abi": [], "block": 0}
                 for name in ("ModelRegistry", "ProviderRegistry", "JobMarket", "InferenceEscrow", "ReceiptRegistry")}
    deployment = Deployment(chain_id=CHAIN_ID, deploy_block=0, deployer=_ZERO, params={}, contracts=contracts)
    mount_explorer(app, deployment, probe_providers=False)
    return app.openapi()


def gateway_schema() -> dict[str, Any]:
    """The gateway's OpenAPI document."""
    from nodeai.serving.apikeys import ApiKeyStore
    from nodeai.serving.engines.base import Engine, EngineHealth
    from nodeai.serving.gateway import create_app

    class NoEngine(Engine):
        """Serves no model: the routes and their schemas do not depend on the engine."""

        name = "none"

        def models(self) -> list:
            return []

        async def health(self) -> EngineHealth:
            return EngineHealth(True)

        def count_tokens(self, model: str, request: Any) -> int:
            return 0

        async def complete(self, request: Any) -> Any:
            raise NotImplementedError

        def stream(self, request: Any) -> Any:
            raise NotImplementedError

    app = create_app(NoEngine(), provider_key=_THROWAWAY_KEY, database=":memory:", auth="api_key",
                     api_keys=ApiKeyStore(), receipt_domain=(CHAIN_ID, _ZERO))
    return app.openapi()


def hoist_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """Move every nested ``$defs`` into ``components.schemas`` (where their ``$ref``s point); returns ``schema``.

    A name defined twice must mean the same schema both times, or the export fails.
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, definition in (node.pop("$defs", None) or {}).items():
                walk(definition, f"{where}/$defs/{name}")
                if name in components and components[name] != definition:
                    raise ValueError(f"{where} defines the schema {name!r} differently from components.schemas")
                components[name] = definition
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(schema.get("paths", {}), "#/paths")
    return schema


def resolve_pointer(document: Any, ref: str) -> Any:
    """The value a local JSON reference (``#/a/b~1c``) names in ``document``; ``KeyError`` if none."""
    if not ref.startswith("#"):
        raise KeyError(f"{ref} is not a local reference")
    node = document
    for token in ref[1:].split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        elif isinstance(node, dict) and token in node:
            node = node[token]
        else:
            raise KeyError(ref)
    return node


def dangling_refs(document: Any) -> list[str]:
    """Every ``$ref`` in ``document`` that does not resolve inside it."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolve_pointer(document, ref)
                except KeyError:
                    found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    return sorted(set(found))


def self_contained(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """``schema`` with its nested ``$defs`` hoisted; ``ValueError`` naming any ``$ref`` that still dangles."""
    hoist_defs(schema)
    dangling = dangling_refs(schema)
    if dangling:
        raise ValueError(f"the {name} OpenAPI document refers to schemas it does not define: {', '.join(dangling)}")
    return schema


def render(schema: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, one trailing newline (stable diffs)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def exports() -> dict[str, str]:
    """File name -> content of every exported document."""
    return {"indexer.json": render(self_contained(indexer_schema(), "indexer")),
            "gateway.json": render(self_contained(gateway_schema(), "gateway"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export the indexer's and the gateway's OpenAPI documents.")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder to write to (default: {OUT.relative_to(ROOT)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is missing or differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in exports().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}: run `.venv/bin/python scripts/export_openapi.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
