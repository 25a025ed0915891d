"""Encrypted JSON keystores: the only way a NodeAI key lives on disk.

The format is the Ethereum "Web3 Secret Storage" v3 file every wallet reads
(geth, MetaMask, foundry's ``cast wallet``), written by ``eth_account`` with
the scrypt KDF. The provider daemon and ``nodeai login`` both use it::

    address = create_keystore(Path("~/.nodeai/provider.json"), password)      # new random key
    address = create_keystore(path, password, private_key="0x...")            # import a key
    account = load_account(path, resolve_password(file=None, env_var="NODEAI_KEYSTORE_PASSWORD", prompt=True))

Files are written with mode 0600 and never overwritten, so an import can not
destroy an existing key. A wrong password, a missing or malformed file each
raise :class:`KeystoreError` with a message that says what to do.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodeai.errors import NodeAIError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# NOTE: eth_account is imported inside the functions: the CLI imports this module to name its
# errors, and eth_account costs a second or two to import on a small machine.

__all__ = ["KeystoreError", "create_keystore", "load_account", "read_address", "resolve_password", "DEFAULT_SCRYPT_N"]

# NOTE: the v3 standard's scrypt cost (2**18, ~256 MiB, about a second): what geth
# and eth_account write by default. Tests pass a lower `scrypt_n` to stay fast.
DEFAULT_SCRYPT_N = 2**18


class KeystoreError(NodeAIError, ValueError):
    """A keystore could not be created, read or decrypted; the message says why and what to do."""


def create_keystore(path: Path, password: str, private_key: str | None = None, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> str:
    """Encrypt ``private_key`` (a new random key when None) into ``path``; returns its checksum address.

    The file is created with mode 0600 and exclusively: an existing file is
    never overwritten (``KeystoreError`` says so).
    """
    path = Path(path).expanduser()
    if not password:
        raise KeystoreError("the keystore password is empty: choose a non-empty password")
    if path.exists():
        raise KeystoreError(f"{path} already exists: keystores are never overwritten; choose another path or delete it first")
    from eth_account import Account

    key = private_key if private_key is not None else "0x" + secrets.token_hex(32)
    try:
        account = Account.from_key(key)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"that is not a valid private key ({exc}): expected 32 bytes as 64 hex digits, with or without 0x") from None
    encrypted = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # NOTE: O_EXCL makes "never overwrite" hold even against a concurrent writer; the mode is
        # set at creation, so the encrypted key is never readable by others, not even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path} already exists: keystores are never overwritten") from None
    except OSError as exc:
        raise KeystoreError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(encrypted, fh)
    return account.address


def _read(path: Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise KeystoreError(f"no keystore at {path}: create one with `nodeai login` (or `nodeai login --import` for an existing key)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeystoreError(f"{path} is not a JSON keystore ({exc}): point the config at the file `nodeai login` wrote") from None
    if not isinstance(data, dict) or "crypto" not in data and "Crypto" not in data:
        raise KeystoreError(f"{path} is not an encrypted JSON keystore (no 'crypto' section)")
    return data


def read_address(path: Path) -> str | None:
    """The address a keystore declares (without decrypting), or None when it names none."""
    from eth_utils import to_checksum_address

    address = _read(path).get("address")
    return to_checksum_address("0x" + str(address).removeprefix("0x")) if address else None


def load_account(path: Path, password: str) -> "LocalAccount":
    """Decrypt the keystore at ``path``; a wrong password raises :class:`KeystoreError`."""
    from eth_account import Account

    data = _read(path)
    try:
        key = Account.decrypt(data, password)
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for the keystore {path}: check the password file or variable") from None
        raise KeystoreError(f"cannot decrypt {path}: {exc}") from None
    return Account.from_key(key)


def resolve_password(*, file: Path | None, env_var: str | None, prompt: bool, label: str = "the keystore") -> str:
    """The keystore password from a file, else an environment variable, else an interactive prompt.

    A file's trailing newline is dropped (``echo secret > file`` works). A
    named source that yields nothing is an error rather than a silent fall-through,
    so a typo in a path or variable name never ends in a hanging prompt.
    """
    if file is not None:
        path = Path(file).expanduser()
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise KeystoreError(f"cannot read the password file {path}: {exc.strerror}") from None
        if not password:
            raise KeystoreError(f"the password file {path} is empty")
        return password
    if env_var:
        password = os.environ.get(env_var)
        if password is None:
            raise KeystoreError(f"the environment variable {env_var} that should hold the password for {label} is not set")
        if not password:
            raise KeystoreError(f"the environment variable {env_var} is empty")
        return password
    if prompt:
        try:
            return getpass.getpass(f"password for {label}: ")
        except (EOFError, KeyboardInterrupt):
            raise KeystoreError("no password entered") from None
    raise KeystoreError(
        f"no password source for {label}: set keystore.password_file or keystore.password_env in the config, "
        "or run interactively to be prompted"
    )
