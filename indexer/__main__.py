"""Run the indexer: ingestion in a background thread, the HTTP API in the foreground.

    python -m nodeai.indexer --deployments deployments/31337.json --rpc-url http://127.0.0.1:8545 \
        --db sqlite:///indexer.db --port 8100

``--rpc-url`` may be given several times (failover; a node that lags the
others is not trusted for the head). ``--db`` takes a file path / sqlite:///
URL (default) or a postgresql:// URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from nodeai.chain.deployments import Deployment
from nodeai.errors import NodeAIError
from nodeai.indexer.ingest import IngestConfig, Ingestor
from nodeai.indexer.metrics import IndexerMetrics
from nodeai.indexer.rpc import RpcPool
from nodeai.indexer.store import open_store


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nodeai.indexer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=Path, required=True, help="deployments/<chain id>.json of the contracts")
    parser.add_argument("--rpc-url", action="append", required=True, help="JSON-RPC URL (repeat for failover)")
    parser.add_argument("--db", default="sqlite:///indexer.db", help="sqlite:///path (default) or postgresql://...")
    parser.add_argument("--confirmations", type=int, default=12, help="blocks below the head before data is final")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="seconds between head polls when caught up")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--no-api", action="store_true", help="ingest only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if not args.deployments.is_file():
            raise NodeAIError(f"no deployments file {args.deployments}: deploy first (scripts/deploy.py) or fix the path")
        deployment = Deployment(**json.loads(args.deployments.read_text()))
        pool = RpcPool(args.rpc_url, deployment.chain_id)
        pool.verify()
        store = open_store(args.db)
        store.migrate()
        metrics = IndexerMetrics()
        ingestor = Ingestor(pool, store, deployment, IngestConfig(confirmations=args.confirmations,
                                                                  poll_interval=args.poll_interval), metrics)
    except NodeAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    thread = threading.Thread(target=ingestor.run, name="ingest", daemon=True)
    thread.start()
    if args.no_api:
        try:
            thread.join()
        except KeyboardInterrupt:
            ingestor.stop()
        return 0
    import uvicorn

    from nodeai.indexer.api import create_app
    from nodeai.indexer.explorer import mount_explorer

    app = create_app(lambda: open_store(args.db), deployment.chain_id, args.confirmations, metrics,
                     is_ready=ingestor.caught_up.is_set)
    mount_explorer(app, deployment, rpc_urls=args.rpc_url)  # the dApp explorer at /explorer/
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    ingestor.stop()
    thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
