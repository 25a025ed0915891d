"""The OpenAI-compatible, voucher-paid, metered gateway of a NodeAI provider.

Layout (after vLLM's OpenAI server): ``protocol.py`` wire models,
``serving.py`` the logic, ``auth.py`` who pays, ``api_router.py`` thin routes,
``app.py`` the application factory, ``config.py`` the typed configuration,
``server.py`` a background uvicorn runner; ``python -m nodeai.serving.gateway``
runs it from a config file.

Paying: header ``X-NodeAI-Voucher`` (``nodeai.serving.payments``) or an API
key (``Authorization: Bearer nk_...``, ``nodeai.serving.apikeys``). Every
response carries a signed receipt (``nodeai.serving.receipts``) in the
``X-NodeAI-Receipt`` header and in ``usage.nodeai_receipt``.
"""

from .app import create_app
from .auth import Authorizer, Charge, Payer
from .server import GatewayServer
from .serving import CHARGED_TOTAL_HEADER, GatewayService, ServedModel

__all__ = [
    "create_app",
    "GatewayServer",
    "GatewayService",
    "ServedModel",
    "Authorizer",
    "Charge",
    "Payer",
    "CHARGED_TOTAL_HEADER",
]
