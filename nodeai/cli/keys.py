"""The wallet's keystore, as the CLI uses it: create, import, unlock, read the address.

The keystore format and its encryption belong to ``nodeai.keystore`` (shared
with the provider daemon); this module only adds what a command line needs
on top: a password prompt with confirmation (through click, so it works in
any terminal and in tests), ``$NODEAI_PASSWORD``, and errors that tell the
user what to do. Keys exist in memory only; on disk there is only the encrypted
keystore.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

import click
from eth_utils import to_checksum_address

from nodeai.cli.errors import MissingComponent, NotLoggedIn, UserError, WrongPassword

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

PASSWORD_ENV = "NODEAI_PASSWORD"


def _backend():
    """``nodeai.keystore``, imported on first use so ``--help`` stays fast."""
    try:
        from nodeai import keystore
    except ImportError:
        raise MissingComponent("nodeai.keystore", "the wallet") from None
    return keystore


def resolve_password(password_file: Path | None, *, confirm: bool, purpose: str) -> str:
    """The password from ``--password-file``, else ``$NODEAI_PASSWORD``, else a hidden prompt."""
    if password_file is not None:
        try:
            text = password_file.read_text()
        except OSError as exc:
            raise UserError(f"cannot read the password file {password_file}: {exc.strerror}") from None
        password = text.rstrip("\r\n")
    elif os.environ.get(PASSWORD_ENV) is not None:
        password = os.environ[PASSWORD_ENV]
    else:
        password = click.prompt(f"Password {purpose}", hide_input=True, confirmation_prompt=confirm, err=True)
    if not password:
        raise UserError("the password is empty", "choose a non-empty password")
    return password


def create(path: Path, password: str, private_key: str | None = None) -> str:
    """Write an encrypted keystore at ``path`` (a new key, or ``private_key``); returns the address."""
    backend = _backend()
    try:
        address = backend.create_keystore(path, password, private_key)
    except backend.KeystoreError as exc:
        raise UserError(f"cannot write the keystore {path}: {exc}") from None
    return to_checksum_address(address)


def unlock(path: Path, password: str) -> "LocalAccount":
    if not path.is_file():
        raise NotLoggedIn(str(path))
    backend = _backend()
    try:
        return backend.load_account(path, password)
    except backend.KeystoreError as exc:
        text = str(exc).lower()
        if "password" in text or "mac" in text:
            raise WrongPassword(str(path)) from None
        raise UserError(f"cannot unlock the keystore {path}: {exc}",
                        "check that the file is an encrypted JSON keystore, or run `nodeai login` again") from None


def keystore_address(path: Path) -> str:
    """The public address a keystore records, read without the password."""
    if not path.is_file():
        raise NotLoggedIn(str(path))
    backend = _backend()
    try:
        address = backend.read_address(path)
    except backend.KeystoreError as exc:
        raise UserError(str(exc), "run `nodeai login --import` to write a new keystore") from None
    if address is None:
        raise UserError(f"the keystore {path} records no address", "run `nodeai login` once so the address is saved")
    return to_checksum_address(address)


def normalise_private_key(text: str) -> str:
    """A private key as typed or piped in: 64 hex digits, with or without 0x; never echoed back."""
    key = text.strip().removeprefix("0x").removeprefix("0X")
    if len(key) != 64 or any(c not in "0123456789abcdefABCDEF" for c in key):
        raise UserError("that is not a private key (expected 64 hexadecimal digits, optionally with 0x)",
                        "paste the key again; it is read from a hidden prompt or stdin, never from the command line")
    return "0x" + key.lower()
