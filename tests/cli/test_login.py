"""``nodeai login`` and ``whoami``: encrypted keystores only, network checked, clear errors for mistakes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from eth_account import Account

from nodeai.chain.anvil import ANVIL_KEYS, free_port
from tests.cli.conftest import PASSWORD, Chain, Indexer, assert_user_error, run, run_json, write_wallet

KEY = ANVIL_KEYS[7]


def _network(chain: Chain) -> list[str]:
    return ["--rpc-url", chain.anvil.url, "--deployments", str(chain.deployments_file)]


def _files_text(home: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in home.rglob("*") if p.is_file())


def test_create_writes_only_an_encrypted_keystore(chain: Chain, home: Path) -> None:
    # NOTE: password typed at the prompt, twice (confirmation), as a person would.
    result = run("login", "--create", *_network(chain), "--indexer-url", "http://127.0.0.1:8100", "--json",
                 input=f"{PASSWORD}\n{PASSWORD}\n")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "created" and data["network"]["chain_id"] == chain.deployment.chain_id
    keystore = Path(data["keystore"])
    assert keystore == home / "keystore.json" and stat.S_IMODE(keystore.stat().st_mode) == 0o600
    encrypted = json.loads(keystore.read_text())
    assert "crypto" in encrypted and encrypted["crypto"]["kdf"] == "scrypt"
    key = Account.decrypt(encrypted, PASSWORD)
    assert Account.from_key(key).address == data["address"]
    assert key.hex().removeprefix("0x") not in _files_text(home).lower()  # no plaintext key anywhere
    config = (home / "config.toml").read_text()
    assert chain.anvil.url in config and data["address"] in config and "crypto" not in config

    whoami = run_json("whoami")
    assert whoami["address"] == data["address"] and whoami["connected"] is True
    assert whoami["token"]["symbol"] == "TUSD" and whoami["token"]["decimals"] == 6


def test_import_reads_the_key_from_stdin(chain: Chain, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAI_PASSWORD", PASSWORD)
    result = run("login", "--import", *_network(chain), "--json", input=KEY + "\n")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["action"] == "imported" and data["address"] == Account.from_key(KEY).address
    assert KEY.removeprefix("0x") not in _files_text(home).lower()
    assert KEY.removeprefix("0x") not in result.stdout + result.stderr

    again = run("login", "--json")  # unlock the keystore just written: the password works
    assert again.exit_code == 0 and json.loads(again.stdout)["action"] == "unlocked"
    assert_user_error(run("login", "--import", *_network(chain), input=KEY + "\n"), "already exists", "--keystore")


def test_import_refuses_what_is_not_a_key(chain: Chain, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAI_PASSWORD", PASSWORD)
    result = run("login", "--import", *_network(chain), input="0xnot-a-key-at-all\n")
    assert_user_error(result, "not a private key", "hidden prompt or stdin")
    assert "not-a-key" not in result.stderr and not (home / "keystore.json").exists()
    # NOTE: there is deliberately no option that takes a key on the command line.
    assert run("login", "--import", "--private-key", KEY).exit_code == 2


def test_wrong_password_is_a_user_error(chain: Chain, indexer: Indexer, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_wallet(home, chain, KEY, indexer.url)
    monkeypatch.setenv("NODEAI_PASSWORD", "not the password")
    assert_user_error(run("login"), "wrong password", "hint:")
    assert_user_error(run("escrow", "deposit", "1", "--provider", chain.market.address("provider")), "wrong password")
    password_file = home / "pw"
    password_file.write_text(PASSWORD + "\n")
    assert run("login", "--password-file", str(password_file)).exit_code == 0  # the file wins over the variable


def test_network_mistakes(chain: Chain, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAI_PASSWORD", PASSWORD)
    down = run("login", "--create", "--rpc-url", f"http://127.0.0.1:{free_port()}", "--deployments", str(chain.deployments_file))
    assert down.exit_code == 1 and "cannot reach the chain" in down.stderr and "Traceback" not in down.stderr
    assert not (home / "keystore.json").exists()  # nothing written before the network checked out
    assert_user_error(run("login", "--create", *_network(chain), "--chain-id", "1"), "serves chain id 31337, not 1")
    assert_user_error(run("login", "--create", "--rpc-url", chain.anvil.url, "--deployments", str(home / "none.json")),
                      "no deployments file")


def test_commands_before_login_say_how_to_log_in(chain: Chain, home: Path) -> None:
    network = ["--rpc-url", chain.anvil.url, "--deployments", str(chain.deployments_file)]
    assert_user_error(run(*network, "jobs", "list", "--mine"), "no keystore", "nodeai login --create")
    assert_user_error(run("jobs", "list", "--mine", *network), "no keystore", "nodeai login --create")  # flags after it too
    assert_user_error(run("login"), "no keystore", "nodeai login --create")
