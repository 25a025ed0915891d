"""The user's settings: ``$NODEAI_HOME/config.toml`` (``~/.nodeai`` by default).

Precedence, highest first: command-line flags, environment variables
(``NODEAI_RPC_URL``, ``NODEAI_CHAIN_ID``, ``NODEAI_DEPLOYMENTS``,
``NODEAI_INDEXER_URL``, ``NODEAI_KEYSTORE``, ``NODEAI_IPFS_API``, ``NODEAI_IPFS_PEERS``), the config
file, the defaults of a local development chain. ``nodeai login`` writes the
file. It never holds a key: the wallet lives in an encrypted keystore whose
path (and public address) the file records.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from nodeai.cli.errors import UserError

DEFAULT_RPC_URL = "http://127.0.0.1:8545"
DEFAULT_INDEXER_URL = "http://127.0.0.1:8100"

# NOTE: the file is grouped into sections a person reads; the settings object is flat.
SECTIONS: dict[str, tuple[str, ...]] = {
    "network": ("rpc_url", "chain_id", "deployments", "indexer_url"),
    "wallet": ("keystore", "address"),
    "ipfs": ("ipfs_api", "ipfs_peers"),
}


def nodeai_home() -> Path:
    """Where the config file, the keystore and the embedded IPFS repository live."""
    return Path(os.environ.get("NODEAI_HOME") or Path.home() / ".nodeai").expanduser()


@dataclass(frozen=True)
class Settings:
    """Where the chain, the contracts, the indexer, IPFS and the wallet are."""

    rpc_url: str = DEFAULT_RPC_URL
    """JSON-RPC URL of the chain."""
    chain_id: int | None = None
    """Expected chain id; checked against the RPC before anything is signed."""
    deployments: str | None = None
    """The deployments file (addresses and ABIs); default: ``deployments/<chain id>.json`` of the repository."""
    indexer_url: str = DEFAULT_INDEXER_URL
    """Base URL of the indexer's HTTP API (used for lists)."""
    keystore: str | None = None
    """Encrypted JSON keystore of the wallet; default: ``$NODEAI_HOME/keystore.json``."""
    address: str | None = None
    """The wallet's public address, so reads need no password."""
    ipfs_api: str | None = None
    """A kubo RPC API URL; unset: the embedded IPFS node in ``$NODEAI_HOME/ipfs``."""
    ipfs_peers: str | None = None
    """Comma-separated peer multiaddrs the embedded IPFS node dials when it starts (e.g. a provider's node)."""

    def ipfs_peer_list(self) -> list[str]:
        return [p.strip() for p in (self.ipfs_peers or "").split(",") if p.strip()]

    def keystore_path(self, home: Path) -> Path:
        return Path(self.keystore).expanduser() if self.keystore else home / "keystore.json"

    def merged(self, **overrides: Any) -> "Settings":
        """These settings with every override that is not None applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def config_path(home: Path) -> Path:
    return home / "config.toml"


def load_settings(home: Path) -> Settings:
    """The settings of the config file in ``home`` (defaults when there is none)."""
    path = config_path(home)
    if not path.is_file():
        return Settings()
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML: {exc}", f"fix it, or delete it and run `nodeai login` again") from None
    known = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    for section, names in SECTIONS.items():
        for name, value in (data.get(section) or {}).items():
            if name in known and name in names:
                values[name] = value
    if "chain_id" in values:
        try:
            values["chain_id"] = int(values["chain_id"])
        except (TypeError, ValueError):
            raise UserError(f"{path}: network.chain_id must be an integer", "fix it or run `nodeai login` again") from None
    return Settings().merged(**values)


def save_settings(home: Path, settings: Settings) -> Path:
    """Write ``settings`` to the config file (atomically, readable by the user only)."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["# NodeAI Hub CLI settings, written by `nodeai login`. No key is kept here:",
             "# the wallet is the encrypted keystore named in [wallet].", ""]
    for section, names in SECTIONS.items():
        lines.append(f"[{section}]")
        for name in names:
            value = getattr(settings, name)
            if value is not None:
                lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    path = config_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # NOTE: a TOML basic string: escape the backslash and the quote, nothing else appears in URLs and paths.
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
