"""API keys for off-chain use (a provider's own apps, tests, invoiced customers).

A key reads ``nk_<id>_<secret>``: ``id`` (8 hex) finds the entry, ``secret``
(32 random bytes, base64url) proves possession. The store keeps only
``sha256(salt || secret)`` with one random salt per deployment, never the key.

# NOTE: a fast salted hash and not scrypt/argon2: those defend low-entropy
# passwords against guessing; a 256-bit random secret cannot be guessed, and a
# per-request scrypt would cost more than a small model's inference. The salt
# makes a leaked store useless against keys of other deployments.

Comparison is ``hmac.compare_digest``, and an unknown id still pays for one
hash and one comparison, so timing tells an attacker nothing about which ids
exist or how much of a secret matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils import is_hex_address, to_checksum_address

__all__ = ["ApiKey", "ApiKeyStore", "ZERO_ADDRESS"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_PREFIX = "nk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    label: str
    payer: str
    """The address receipts name as payer (the zero address when the key has no wallet)."""
    hash: str
    created: float


class ApiKeyStore:
    """Hashed API keys, optionally persisted to a JSON file (written atomically, mode 0600)."""

    def __init__(self, salt: bytes | None = None, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self.salt = salt if salt is not None else secrets.token_bytes(16)
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()
        self._dummy = self._hash("dummy-secret")

    @classmethod
    def load(cls, path: str | Path) -> "ApiKeyStore":
        """Open a key file, creating an empty one (with a fresh salt) when it does not exist."""
        path = Path(path)
        if not path.exists():
            store = cls(path=path)
            store._save()
            return store
        try:
            data = json.loads(path.read_text())
            store = cls(salt=bytes.fromhex(data["salt"]), path=path)
            for entry in data["keys"]:
                key = ApiKey(**entry)
                store._keys[key.id] = key
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a NodeAI API key file ({exc}): fix or remove it") from None
        return store

    def _hash(self, secret: str) -> str:
        return hashlib.sha256(self.salt + secret.encode()).hexdigest()

    def create(self, label: str, payer: str = ZERO_ADDRESS) -> str:
        """Add a key and return it in full; only its hash is kept, so show it to its owner now."""
        if not is_hex_address(payer):
            raise ValueError(f"payer must be an address, got {payer!r}")
        with self._lock:
            key_id = secrets.token_hex(4)
            while key_id in self._keys:
                key_id = secrets.token_hex(4)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
            self._keys[key_id] = ApiKey(key_id, label, to_checksum_address(payer), self._hash(secret), time.time())
            self._save()
        return f"{_PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        with self._lock:
            removed = self._keys.pop(key_id, None) is not None
            self._save()
        return removed

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key's entry when ``presented`` is a valid key, else None (in constant time per key)."""
        key_id, secret = "", presented
        if presented.startswith(_PREFIX) and presented.count("_") >= 2:
            key_id, _, secret = presented[len(_PREFIX):].partition("_")
        entry = self._keys.get(key_id)
        expected = entry.hash if entry is not None else self._dummy
        matches = hmac.compare_digest(self._hash(secret), expected)
        return entry if matches and entry is not None else None

    def __len__(self) -> int:
        return len(self._keys)

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {"version": 1, "salt": self.salt.hex(), "keys": [asdict(k) for k in self._keys.values()]}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        tmp.replace(self.path)
