"""Encrypted keystores: create, import, load, wrong password, never overwrite, password sources."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from nodeai.keystore import KeystoreError, create_keystore, load_account, read_address, resolve_password

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
FAST = 2**4  # NOTE: scrypt cost for tests only; files written by users keep the standard 2**18


def test_import_then_load_gives_the_same_account_and_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "provider.json"
    address = create_keystore(path, "correct horse", KEY, scrypt_n=FAST)
    assert address == Account.from_key(KEY).address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KEY[2:] not in path.read_text()  # encrypted, not plaintext
    assert json.loads(path.read_text())["crypto"]["kdf"] == "scrypt"
    assert load_account(path, "correct horse").key.hex().removeprefix("0x") == KEY[2:]
    assert read_address(path) == address


def test_new_key_is_random(tmp_path: Path) -> None:
    a = create_keystore(tmp_path / "a.json", "pw", scrypt_n=FAST)
    b = create_keystore(tmp_path / "b.json", "pw", scrypt_n=FAST)
    assert a != b and load_account(tmp_path / "a.json", "pw").address == a


def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, "right", KEY, scrypt_n=FAST)
    with pytest.raises(KeystoreError, match="wrong password for the keystore"):
        load_account(path, "wrong")


def test_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keystore(path, "pw", KEY, scrypt_n=FAST)
    before = path.read_bytes()
    with pytest.raises(KeystoreError, match="never overwritten"):
        create_keystore(path, "pw", None, scrypt_n=FAST)
    assert path.read_bytes() == before


@pytest.mark.parametrize("content, message", [(None, "no keystore at"), ("not json", "not a JSON keystore"),
                                              ('{"a": 1}', "not an encrypted JSON keystore")])
def test_missing_or_malformed_files(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "k.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeystoreError, match=message):
        load_account(path, "pw")


def test_bad_private_key_and_empty_password(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="not a valid private key"):
        create_keystore(tmp_path / "k.json", "pw", "0x1234", scrypt_n=FAST)
    with pytest.raises(KeystoreError, match="password is empty"):
        create_keystore(tmp_path / "k.json", "", KEY, scrypt_n=FAST)
    assert not (tmp_path / "k.json").exists()


def test_password_sources_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "pw"
    file.write_text("from-file\n")
    monkeypatch.setenv("NODE_TEST_PW", "from-env")
    assert resolve_password(file=file, env_var="NODE_TEST_PW", prompt=False) == "from-file"
    assert resolve_password(file=None, env_var="NODE_TEST_PW", prompt=False) == "from-env"
    with pytest.raises(KeystoreError, match="NODE_TEST_MISSING .*is not set"):
        resolve_password(file=None, env_var="NODE_TEST_MISSING", prompt=False)
    with pytest.raises(KeystoreError, match="cannot read the password file"):
        resolve_password(file=tmp_path / "nope", env_var=None, prompt=False)
    with pytest.raises(KeystoreError, match="no password source"):
        resolve_password(file=None, env_var=None, prompt=False)
    file.write_text("\n")
    with pytest.raises(KeystoreError, match="is empty"):
        resolve_password(file=file, env_var=None, prompt=False)
