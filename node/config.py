"""The provider daemon's configuration: one TOML file, typed, every option documented once.

Each option is a field with a docstring; the docstrings are the descriptions
pydantic keeps (``use_attribute_docstrings``), and ``example_config()`` writes
the commented example ``nodeai node init`` saves from them, so an option is
defined in exactly one place.

Precedence: environment variables over the file over the defaults. A variable
names the option's path with ``__`` between the parts, after the prefix
``NODEAI_NODE__``::

    NODEAI_NODE__CHAIN__RPC_URL=http://10.0.0.5:8545
    NODEAI_NODE__CLAIM__CAPACITY=8
    NODEAI_NODE__PROVIDER__MODELS='[{"id": 1, "price_per_1k_tokens": 2000}]'   # JSON for lists and tables

A private key never belongs in the config: one anywhere in the file or the
environment overrides is refused, with the command that imports it into an
encrypted keystore.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nodeai.errors import NodeAIError

ENV_PREFIX = "NODEAI_NODE__"

__all__ = ["ConfigError", "PlaintextKeyError", "NodeConfig", "load_config", "example_config", "ENV_PREFIX"]


class ConfigError(NodeAIError, ValueError):
    """The config file or an override is missing, malformed or inconsistent."""


class PlaintextKeyError(ConfigError):
    def __init__(self, where: str):
        super().__init__(
            f"{where} holds a plaintext private key, which the daemon refuses to read: import it into an encrypted "
            "keystore with `nodeai login --import --keystore PATH`, set keystore.path to PATH, remove the key "
            "from the config, and consider the key exposed if the file was shared"
        )


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class ChainConfig(Section):
    """Which chain and which contracts."""

    rpc_url: str = "http://127.0.0.1:8545"
    """JSON-RPC URL of the chain (HTTP)."""
    chain_id: int = 31337
    """Chain id the daemon expects; it refuses to start when the RPC serves another chain."""
    deployments: Path = Path("deployments/31337.json")
    """The deployments file (contract addresses and ABIs) written by scripts/deploy.py."""
    rpc_timeout: float = Field(10.0, gt=0)
    """Seconds one JSON-RPC request may take."""
    poll_interval: float = Field(1.0, gt=0)
    """Seconds between polls of the chain head (the clock waiting jobs go by) when feed.watch_head is off."""


class KeystoreConfig(Section):
    """The provider's key: an encrypted JSON keystore, never a plaintext key."""

    path: Path = Path("~/.nodeai/keystore.json")
    """Encrypted JSON keystore of the provider account (`nodeai login` writes one)."""
    password_file: Path | None = None
    """File holding the keystore password (first line). Takes precedence over password_env."""
    password_env: str | None = "NODEAI_KEYSTORE_PASSWORD"
    """Environment variable holding the keystore password; without file or variable the daemon prompts."""


class ModelOffer(Section):
    """One model (or agent) the provider serves."""

    id: int = Field(gt=0)
    """On-chain id of the model or agent (ModelRegistry)."""
    price_per_1k_tokens: int = Field(gt=0)
    """Price per 1,000 tokens in token base units (USDC: 1 = 0.000001); jobs are charged at this price."""
    engine_model: str | None = None
    """Name the serving engine knows the model by (default: the model id as text)."""

    @property
    def engine_name(self) -> str:
        return self.engine_model or str(self.id)


class ProviderConfig(Section):
    """What the provider advertises on chain; reconciled idempotently on every start."""

    endpoint: str = "http://127.0.0.1:8000/v1"
    """Public URL of the provider's OpenAI-compatible gateway."""
    peer_id: str = ""
    """libp2p peer id used for gossip (may be empty)."""
    stake: int = Field(100_000_000, ge=0)
    """Stake to hold in the ProviderRegistry (token base units); topped up on start, never reduced."""
    models: list[ModelOffer] = Field(default_factory=list)
    """Models served and their prices; each is set on chain on start."""

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelOffer]) -> list[ModelOffer]:
        ids = [m.id for m in models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"model ids listed twice: {duplicates}")
        return models


class ClaimConfig(Section):
    """Which open jobs the daemon claims."""

    min_payment: int = Field(0, ge=0)
    """Smallest maxPayment (token base units) worth claiming: the price floor."""
    capacity: int = Field(4, ge=1)
    """Jobs in progress at once (claimed but not yet submitted)."""
    min_time_to_deadline: float = Field(120.0, ge=0)
    """Seconds a job must have left before its deadline to be claimed (time to execute and submit)."""


class BatchingConfig(Section):
    """When inference vouchers are redeemed and receipt roots committed."""

    gateway_store: Path | None = None
    """The gateway's store (its SQLite file) holding vouchers and receipts; none: nothing to redeem or commit."""
    interval: float = Field(30.0, gt=0)
    """Seconds between checks of the voucher and receipt thresholds."""
    voucher_min_amount: int = Field(10_000_000, ge=0)
    """Redeem once the vouchers not yet redeemed are worth at least this much (token base units)..."""
    voucher_expiry_margin: float = Field(3_600.0, ge=0)
    """...or once one of them expires within this many seconds."""
    voucher_min_validity: int = Field(60, ge=0)
    """Vouchers expiring sooner than this are not sent (the transaction could land after the expiry)."""
    voucher_max_batch: int = Field(64, ge=1, le=64)
    """Vouchers per redeemBatch transaction (the contract takes at most 64)."""
    receipt_min_count: int = Field(256, ge=1)
    """Commit a Merkle root once this many receipts wait..."""
    receipt_max_age: float = Field(3_600.0, gt=0)
    """...or, when any receipt waits, once the last commit is this many seconds ago."""
    receipt_max_batch: int = Field(4_096, ge=1)
    """Receipts per committed root."""


class TxConfig(Section):
    """How transactions are sent, bumped and retried."""

    bump_after: float = Field(30.0, gt=0)
    """Seconds without a receipt after which a transaction is replaced with higher fees."""
    bump_percent: float = Field(12.5, ge=10)
    """Fee increase per replacement, percent (nodes demand at least 10; geth 10, others 12.5)."""
    max_bumps: int = Field(6, ge=0)
    """Replacements before a transaction is given up as stuck."""
    max_fee_per_gas: int | None = Field(None, gt=0)
    """Ceiling for maxFeePerGas in wei; bumping stops there (none: no ceiling)."""
    retries: int = Field(5, ge=0)
    """Retries of a transient error (RPC down, timeout) before giving up."""
    backoff: float = Field(0.5, gt=0)
    """First retry delay in seconds; doubles per retry."""
    max_backoff: float = Field(30.0, gt=0)
    """Longest retry delay in seconds."""
    poll_interval: float = Field(0.2, gt=0)
    """Seconds between receipt polls."""


class FeedConfig(Section):
    """Where open jobs come from: the indexer's job feed."""

    mode: Literal["embedded", "store"] = "embedded"
    """embedded: the daemon runs the indexer's ingestion itself into state_dir/indexer.db;
    store: read the database of a separately run indexer (db_url)."""
    db_url: str | None = None
    """Database of the indexer (sqlite:///path or postgresql://...), for mode = "store"."""
    confirmations: int = Field(12, ge=0)
    """Blocks below the head before the indexer treats data as final (embedded mode)."""
    watch_head: bool = True
    """Also read the JobCreated logs of each new block straight from the RPC, so a claim does not wait
    for the indexer to ingest the block (the indexer's feed still covers restarts and missed blocks)."""
    poll_interval: float = Field(0.1, gt=0)
    """Seconds between polls of the chain head and of the feed."""

    @model_validator(mode="after")
    def _store_needs_url(self) -> "FeedConfig":
        if self.mode == "store" and not self.db_url:
            raise ValueError('mode = "store" needs db_url (the indexer database URL)')
        return self


class IpfsConfig(Section):
    """The artifact store job inputs are read from and outputs written to."""

    backend: Literal["embedded", "kubo-rpc", "directory"] = "embedded"
    """embedded: an in-process kubo node in state_dir/ipfs; kubo-rpc: your kubo daemon at api_url;
    directory: a local content-addressed folder (single host, no network)."""
    api_url: str = "http://127.0.0.1:5001"
    """kubo RPC API URL (backend = "kubo-rpc")."""
    directory: Path | None = None
    """Folder of the "directory" backend (default: state_dir/artifacts)."""
    swarm_port: int | None = None
    """Swarm port of the embedded node (default: any free port)."""
    peers: list[str] = Field(default_factory=list)
    """Multiaddrs of IPFS peers the embedded node joins at start (/ip4/HOST/tcp/PORT/p2p/PEER_ID)."""
    cache_max_bytes: int = Field(10 * 2**30, ge=0)
    """Size limit of the local artifact cache (LRU); 0 disables the cache."""


class QueueConfig(Section):
    """How claimed jobs reach the workers that execute them."""

    mode: Literal["in-process", "nats"] = "in-process"
    """in-process: workers are tasks of the daemon; nats: `nodeai node worker` processes pull from JetStream."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server with JetStream (mode = "nats")."""
    stream: str = "NODEAI_JOBS"
    """JetStream work-queue stream for claimed jobs."""
    consumer: str = "nodeai-workers"
    """Durable pull consumer the workers share."""
    ack_wait: float = Field(300.0, gt=0)
    """Seconds a worker may hold a job without acknowledging before it is redelivered to another."""
    max_deliver: int = Field(20, ge=1)
    """Deliveries of one job before it is given up as failed."""
    control_subject: str | None = None
    """NATS subject on which workers hand results back to the daemon (default: <stream>.control)."""

    @property
    def subject(self) -> str:
        return f"{self.stream.lower()}.jobs"

    @property
    def control(self) -> str:
        return self.control_subject or f"{self.stream.lower()}.control"


class EngineConfig(Section):
    """The serving engine batch-inference jobs run on."""

    factory: str | None = None
    """module:callable returning an Engine (serving/engines/base.py), e.g.
    "nodeai.serving.engines.llamacpp:LlamaCppEngine"; none: batch-inference jobs are not taken."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the factory."""
    max_tokens: int = Field(256, ge=1)
    """Upper bound on tokens generated per prompt, whatever the job asks."""


class AgentsConfig(Section):
    """Agent jobs, run by the agent runtime (nodeai.agents)."""

    enabled: bool = True
    """Take agent jobs (their model calls go to the engine of [engine])."""
    store: Path | None = None
    """The runtime's SQLite state: checkpoints and approvals (default: state_dir/agents.db)."""


class HttpConfig(Section):
    """The daemon's own HTTP endpoints: /health and /metrics."""

    enabled: bool = True
    """Serve /health and /metrics."""
    host: str = "127.0.0.1"
    """Address to bind (keep 127.0.0.1 unless a scraper elsewhere needs it)."""
    port: int = Field(9100, ge=0, le=65_535)
    """Port to bind (0: any free port, written to state_dir/http.port)."""


class LoggingConfig(Section):
    """Logs of the daemon."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written."""
    json_format: bool = Field(False, alias="json")
    """One JSON object per line instead of text."""
    file: Path | None = None
    """Log file (default: state_dir/node.log); `nodeai logs -f` follows it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True)


class NodeConfig(Section):
    """Configuration of the NodeAI provider daemon (`nodeai node run --config node.toml`)."""

    state_dir: Path = Path("~/.nodeai/node")
    """Folder for the daemon's state: job database, embedded indexer, artifacts, logs."""
    chain: ChainConfig = Field(default_factory=ChainConfig)
    keystore: KeystoreConfig = Field(default_factory=KeystoreConfig)
    provider: ProviderConfig = Field(default_factory=ProviderConfig)
    claim: ClaimConfig = Field(default_factory=ClaimConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    tx: TxConfig = Field(default_factory=TxConfig)
    feed: FeedConfig = Field(default_factory=FeedConfig)
    ipfs: IpfsConfig = Field(default_factory=IpfsConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    # -- derived paths (relative paths are resolved against the config file's folder by load_config) --
    @property
    def state_path(self) -> Path:
        return self.state_dir.expanduser()

    @property
    def log_path(self) -> Path:
        return (self.logging.file or self.state_path / "node.log").expanduser()

    @property
    def db_path(self) -> Path:
        return self.state_path / "node.db"

    def model(self, model_id: int) -> ModelOffer | None:
        return next((m for m in self.provider.models if m.id == model_id), None)


# -- loading ---------------------------------------------------------------------------------------------

# NOTE: 32 bytes as hex is what a secp256k1 private key looks like; nothing else in this config
# (URLs, paths, names, amounts) ever is, so such a value is refused wherever it appears.
_HEX_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_KEY_NAMES = re.compile(r"(private|secret)_?key|privkey|mnemonic|seed_phrase", re.IGNORECASE)


def find_plaintext_key(data: Any, where: str) -> str | None:
    """Where (dotted path) a plaintext key sits in ``data``, or None."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if _KEY_NAMES.search(str(key)) and value not in (None, ""):
                return path
            found = find_plaintext_key(value, path)
            if found:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = find_plaintext_key(value, f"{where}[{i}]")
            if found:
                return found
    elif isinstance(data, str) and _HEX_KEY.match(data.strip()):
        return where
    return None


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested dict the ``NODEAI_NODE__A__B=value`` variables spell (JSON values for lists and tables)."""
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name} looks like JSON but is not valid JSON: {exc}") from None
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name} conflicts with another variable that sets {part} to a value")
            node = child
        node[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown option (check the spelling; `nodeai node init` writes every option with its description)"
        elif "input" in item and not isinstance(item["input"], (dict, list)):
            message += f" (got {item['input']!r})"
        lines.append(f"  {where}: {message}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def _resolve_paths(config: NodeConfig, base: Path) -> NodeConfig:
    """Relative paths in the file are relative to the file's folder, not to the working directory."""

    def fix(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else base / path

    config.state_dir = fix(config.state_dir)  # type: ignore[assignment]
    config.chain.deployments = fix(config.chain.deployments)  # type: ignore[assignment]
    config.keystore.path = fix(config.keystore.path)  # type: ignore[assignment]
    config.keystore.password_file = fix(config.keystore.password_file)
    config.ipfs.directory = fix(config.ipfs.directory)
    config.logging.file = fix(config.logging.file)
    config.batching.gateway_store = fix(config.batching.gateway_store)
    config.agents.store = fix(config.agents.store)
    return config


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """The configuration of ``path`` (None: defaults only) with the environment overrides applied."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "the defaults"
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"no config file at {path}: write an example with `nodeai node init --config {path}`")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        base, source = path.resolve().parent, str(path)
        where = find_plaintext_key(data, "")
        if where:
            raise PlaintextKeyError(f"{path} ({where})")
    overrides = env_overrides(environ)
    where = find_plaintext_key(overrides, "")
    if where:
        raise PlaintextKeyError(f"the environment variable {ENV_PREFIX}{where.upper().replace('.', '__')}")
    if overrides:
        source += " and NODEAI_NODE__* variables"
    try:
        config = NodeConfig.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    return _resolve_paths(config, base)


# -- the commented example -------------------------------------------------------------------------------

_EXAMPLE_VALUES: dict[str, Any] = {
    "provider.models": [{"id": 1, "price_per_1k_tokens": 2_000, "engine_model": "smollm2-135m-instruct"}],
    "engine.factory": "nodeai.serving.engines.llamacpp:LlamaCppEngine",
    "feed.db_url": "postgresql://indexer@127.0.0.1:5432/indexer",
    "keystore.password_file": "~/.nodeai/keystore.password",
    "batching.gateway_store": "~/.nodeai/gateway/gateway.db",
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else f"{value:_}" if abs(value) >= 100_000 else str(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise TypeError(f"no TOML form for {value!r}")


def _comment(text: str | None, indent: str = "") -> list[str]:
    return [f"{indent}# {line.strip()}".rstrip() for line in (text or "").strip().splitlines()]


def example_config() -> str:
    """A complete, commented node.toml: every option with its description and default."""
    lines = [
        "# NodeAI provider daemon configuration (`nodeai node run --config node.toml`).",
        "# Every option is listed with its default; override any of them with an environment variable",
        f"# {ENV_PREFIX}<SECTION>__<OPTION>, e.g. {ENV_PREFIX}CHAIN__RPC_URL. Never put a private key here:",
        "# the key lives in the encrypted keystore named in [keystore] (`nodeai login --import`).",
        "",
    ]
    top = NodeConfig.model_fields
    for name, field in top.items():
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, Section):
            continue
        lines += _comment(field.description)
        lines.append(f"{name} = {_toml(field.default)}")
        lines.append("")
    for name, field in top.items():
        section = field.default_factory
        if not (isinstance(section, type) and issubclass(section, Section)):
            continue
        lines += _comment(section.__doc__)
        lines.append(f"[{name}]")
        tables: list[str] = []
        for option, spec in section.model_fields.items():
            key = spec.alias or option
            example = _EXAMPLE_VALUES.get(f"{name}.{key}")
            default = spec.get_default(call_default_factory=True)
            if isinstance(example, list) and example and isinstance(example[0], dict):
                tables += _comment(spec.description) + [""]
                for item in example:
                    tables.append(f"[[{name}.{key}]]")
                    item_model = spec.annotation.__args__[0]  # type: ignore[union-attr]
                    for sub, sub_spec in item_model.model_fields.items():
                        if sub in item:
                            tables += _comment(sub_spec.description)
                            tables.append(f"{sub} = {_toml(item[sub])}")
                    tables.append("")
                continue
            lines += _comment(spec.description)
            if default is None:
                lines.append(f"# {key} = {_toml(example) if example is not None else '...'}")
            else:
                lines.append(f"{key} = {_toml(default)}")
        lines.append("")
        lines += tables
    return "\n".join(lines).rstrip() + "\n"
