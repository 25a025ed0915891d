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


def render(schema: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, one trailing newline (stable diffs)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def exports() -> dict[str, str]:
    """File name -> content of every exported document."""
    return {"indexer.json": render(indexer_schema()), "gateway.json": render(gateway_schema())}


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
