"""The gateway's configuration (one JSON or TOML file) and ``build_app``, which turns it into a running app.

Every option is a field with a docstring (pydantic keeps them as descriptions,
``python -m nodeai.serving.gateway --help`` prints them as flags), so an
option is defined once.

The provider key comes from an encrypted JSON keystore (``keystore``, password
from ``password_file`` or the ``password_env`` variable). A plaintext key
(``dev_private_key``) is only accepted with ``dev = true``, for local chains
and tests; outside dev it is refused.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nodeai.errors import NodeAIError

from ..content_filter import DEFAULT_BLOCKLIST
from ..limits import Limits

__all__ = ["GatewayConfig", "GatewayConfigError", "load_config", "build_app", "build_engines", "provider_key"]


class GatewayConfigError(NodeAIError, ValueError):
    """The gateway config is missing, malformed or inconsistent (the message says which option)."""


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)

    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 to serve other machines, behind TLS)."""
    port: int = Field(8000, ge=1, le=65_535)
    """TCP port to listen on."""
    engine: str = "cpu"
    """Engine: "cpu" (SmolLM2 on llama.cpp + MiniLM on ONNX Runtime, from their packages) or
    "package.module:factory" returning an Engine (e.g. a supervised vLLM)."""
    models: dict[str, int] = Field(default_factory=dict)
    """Served model name -> its id in the on-chain ModelRegistry (models without one take API keys only)."""
    auth: Literal["voucher", "api_key", "both"] = "voucher"
    """How requests pay: InferenceEscrow vouchers, API keys, or either."""
    rpc_url: str | None = "http://127.0.0.1:8545"
    """JSON-RPC URL of the chain the escrow lives on (needed for vouchers and on-chain prices)."""
    deployments: Path | None = Path("deployments/31337.json")
    """The deployments file (addresses and ABIs) written by scripts/deploy.py."""
    keystore: Path | None = Path("~/.nodeai/keystore.json")
    """Encrypted JSON keystore of the provider account (`nodeai login` writes one)."""
    password_file: Path | None = None
    """File holding the keystore password (first line); takes precedence over password_env."""
    password_env: str | None = "NODEAI_KEYSTORE_PASSWORD"
    """Environment variable holding the keystore password."""
    dev: bool = False
    """Development mode: allows dev_private_key. Never on a public network."""
    dev_private_key: str | None = None
    """Plaintext provider key, for local chains and tests only (needs dev = true)."""
    database: Path = Path("~/.nodeai/gateway/gateway.db")
    """SQLite file keeping charges, vouchers and receipts (the provider daemon reads it to settle)."""
    api_keys_file: Path | None = None
    """JSON file of hashed API keys (created when missing); needed for auth "api_key" or "both"."""
    offchain_prices: dict[str, int] = Field(default_factory=dict)
    """Price per 1k tokens metered for API-key requests to models without an on-chain id."""
    limits: Limits = Field(default_factory=Limits)
    """Request limits (body size, prompt tokens, max_tokens cap, per-payer rate)."""
    content_filter: str = "blocklist"
    """Content filter: "blocklist", "none" or "package.module:factory"."""
    blocklist: list[str] = Field(default_factory=lambda: list(DEFAULT_BLOCKLIST))
    """Terms the blocklist filter refuses (whole words, case-insensitive)."""
    channel_cache_s: float = Field(30.0, gt=0)
    """Longest a payer's on-chain deposit is trusted from cache (never beyond the withdrawal timelock)."""
    price_cache_s: float = Field(60.0, gt=0)
    """How long the provider's on-chain price is cached."""
    withdraw_margin_s: float = Field(15.0, ge=0)
    """A deposit whose withdrawal unlocks within this many seconds counts as gone."""
    min_voucher_validity_s: int = Field(60, ge=0)
    """A voucher must stay valid this long, so the provider can still redeem it."""

    @model_validator(mode="after")
    def _consistent(self) -> "GatewayConfig":
        if self.dev_private_key is not None and not self.dev:
            raise ValueError("dev_private_key is a plaintext key and is refused outside development: import it into "
                             "an encrypted keystore (`nodeai login --import --keystore PATH`) and set keystore, "
                             "or set dev = true on a local chain")
        if self.auth in ("voucher", "both") and (self.rpc_url is None or self.deployments is None):
            raise ValueError(f"auth {self.auth!r} takes vouchers, which need rpc_url and deployments")
        if self.auth in ("api_key", "both") and self.api_keys_file is None:
            raise ValueError(f"auth {self.auth!r} takes API keys, which need api_keys_file")
        return self


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Read a JSON or TOML config (none: defaults) and apply ``overrides`` (e.g. command-line flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = path.expanduser()
        if not path.is_file():
            raise GatewayConfigError(f"no gateway config at {path}: write one (see --help for the options)")
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise GatewayConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise GatewayConfigError(f"invalid gateway config{f' {path}' if path else ''}: {problems}") from None


def provider_key(config: GatewayConfig) -> bytes:
    """The provider's private key, from the keystore (or, in dev mode only, the plaintext dev key)."""
    if config.dev_private_key is not None:
        return bytes.fromhex(config.dev_private_key.removeprefix("0x"))
    if config.keystore is None:
        raise GatewayConfigError("no provider key: set keystore (an encrypted JSON keystore)")
    from nodeai.keystore import load_account, resolve_password

    path = config.keystore.expanduser()
    password = resolve_password(file=config.password_file, env_var=config.password_env, prompt=False,
                                label=str(path))
    return bytes(load_account(path, password).key)


def build_engines(config: GatewayConfig) -> list[Any]:
    if config.engine == "cpu":
        from ..engines.llamacpp import LlamaCppEngine
        from ..engines.onnx_embed import OnnxEmbeddingEngine

        return [LlamaCppEngine(), OnnxEmbeddingEngine()]
    module_name, _, attribute = config.engine.partition(":")
    if not module_name or not attribute:
        raise GatewayConfigError(f"engine {config.engine!r} is neither 'cpu' nor 'package.module:factory'")
    import importlib

    made = getattr(importlib.import_module(module_name), attribute)()
    return list(made) if isinstance(made, (list, tuple)) else [made]


def build_app(config: GatewayConfig, engines: list[Any] | None = None, manage_engines: bool | None = None) -> Any:
    """The FastAPI app the config describes (engines built from ``config.engine`` unless given; the app
    starts and closes the engines it built, and given ones only when ``manage_engines`` says so)."""
    from eth_account import Account
    from web3 import Web3

    from nodeai.chain.deployments import Deployment

    from ..apikeys import ApiKeyStore
    from ..chain_view import ChainView
    from ..content_filter import load_filter
    from .app import create_app

    key = provider_key(config)
    provider = Account.from_key(key).address
    chain = None
    if config.auth in ("voucher", "both") or config.models:
        assert config.rpc_url is not None and config.deployments is not None
        path = config.deployments.expanduser()
        if not path.is_file():
            raise GatewayConfigError(f"no deployments file {path}: run `python scripts/deploy.py` or fix deployments")
        deployment = Deployment(**json.loads(path.read_text()))
        w3 = Web3(Web3.HTTPProvider(config.rpc_url, request_kwargs={"timeout": 10}))
        deployment.check_chain(w3, config.rpc_url)
        chain = ChainView(w3, deployment, provider, list(config.models.values()), channel_ttl=config.channel_cache_s,
                          price_ttl=config.price_cache_s, margin=config.withdraw_margin_s)
    api_keys = ApiKeyStore.load(config.api_keys_file.expanduser()) if config.api_keys_file else None
    return create_app(
        engines if engines is not None else build_engines(config), provider_key=key,
        database=config.database.expanduser(), chain=chain, model_ids=config.models, auth=config.auth,
        api_keys=api_keys, limits=config.limits, content_filter=load_filter(config.content_filter, config.blocklist),
        offchain_prices=config.offchain_prices, min_voucher_validity=config.min_voucher_validity_s,
        manage_engines=engines is None if manage_engines is None else manage_engines,
    )  # fmt: skip
