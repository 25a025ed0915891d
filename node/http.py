"""The daemon's HTTP surface: ``/health`` (JSON, 503 until ready) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from nodeai.node.loop import ProviderDaemon

__all__ = ["create_app"]


def create_app(daemon: "ProviderDaemon") -> FastAPI:
    app = FastAPI(title="NodeAI provider daemon", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    def health() -> JSONResponse:
        body = daemon.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(daemon.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
