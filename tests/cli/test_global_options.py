"""The global options work before and after the subcommand: ``nodeai --json jobs list`` == ``nodeai jobs list --json``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from nodeai.cli.config import Settings, save_settings
from nodeai.cli.global_options import GLOBAL_OPTIONS
from nodeai.cli.main import FOREIGN_GROUPS, cli
from tests.cli.conftest import Chain, Indexer, assert_user_error, run

NOWHERE = "http://127.0.0.1:9"  # nothing listens there


def _all_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        if not path and name in FOREIGN_GROUPS:
            continue
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += _all_commands(command, (*path, name))
    return found


@pytest.mark.parametrize("path,command", _all_commands(cli), ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_takes_every_global_option(path: tuple[str, ...], command: click.Command) -> None:
    opts = {opt for param in command.params for opt in getattr(param, "opts", ())}
    missing = [option.flag for option in GLOBAL_OPTIONS if option.flag not in opts]
    assert not missing, f"`nodeai {' '.join(path)}` does not accept {missing}"


def _jobs_list(*args: str) -> dict:
    result = run(*args)
    assert result.exit_code == 0, f"{args}: exit {result.exit_code}\n{result.stderr}"
    return json.loads(result.stdout)


def test_json_before_between_and_after(chain: Chain, indexer: Indexer, wallet: str) -> None:
    chain.market.create_job(chain.model_id, b"json anywhere", 1_000_000)
    indexer.wait_synced()
    after = _jobs_list("jobs", "list", "--json")
    assert after["count"] >= 1
    assert _jobs_list("--json", "jobs", "list") == after
    assert _jobs_list("jobs", "--json", "list") == after
    # an error is one JSON document wherever --json stands
    for args in (("--json", "escrow", "deposit", "ten", "--provider", wallet),
                 ("escrow", "deposit", "ten", "--provider", wallet, "--json")):
        result = run(*args)
        assert result.exit_code == 2 and json.loads(result.stdout)["error"]["type"] == "user_error", args


def test_network_options_after_the_subcommand(chain: Chain, indexer: Indexer, wallet: str, home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    job_id, _ = chain.market.create_job(chain.model_id, b"flags after", 1_000_000)
    indexer.wait_synced()
    # NOTE: the config file points nowhere: only the flags can make these commands work.
    save_settings(home, Settings(rpc_url=NOWHERE, indexer_url=NOWHERE, keystore=str(home / "keystore.json")))
    network = ["--rpc-url", chain.anvil.url, "--deployments", str(chain.deployments_file), "--indexer-url", indexer.url]

    before = run(*network, "jobs", "show", str(job_id), "--json")
    after = run("jobs", "show", str(job_id), "--json", *network)
    assert before.exit_code == after.exit_code == 0, before.stderr + after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(after.stdout)["state"] == "OPEN"
    listed = run("jobs", "list", *network, "--json")
    assert listed.exit_code == 0 and job_id in [j["job_id"] for j in json.loads(listed.stdout)["items"]]

    down = run("jobs", "show", str(job_id))
    assert down.exit_code == 1 and "cannot reach the chain at http://127.0.0.1:9" in down.stderr


def test_precedence_after_over_before_over_environment(chain: Chain, wallet: str, home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    job_id, _ = chain.market.create_job(chain.model_id, b"who wins", 1_000_000)
    monkeypatch.setenv("NODEAI_RPC_URL", NOWHERE)
    assert run("jobs", "show", str(job_id)).exit_code == 1  # the environment beats the config file
    # a flag before the subcommand beats the environment, which is not applied a second time after it
    assert run("--rpc-url", chain.anvil.url, "jobs", "show", str(job_id)).exit_code == 0
    assert run("jobs", "show", str(job_id), "--rpc-url", chain.anvil.url).exit_code == 0
    # after the subcommand beats before it
    assert run("--rpc-url", NOWHERE, "jobs", "show", str(job_id), "--rpc-url", chain.anvil.url).exit_code == 0
    assert run("--rpc-url", chain.anvil.url, "jobs", "show", str(job_id), "--rpc-url", NOWHERE).exit_code == 1
    assert_user_error(run("jobs", "show", str(job_id), "--rpc-url", chain.anvil.url, "--chain-id", "1"),
                      "serves chain id 31337, not 1")


def test_login_keeps_its_own_network_options(chain: Chain, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAI_PASSWORD", "correct horse battery staple")
    result = run("login", "--create", "--no-check", "--rpc-url", chain.anvil.url, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["network"]["rpc_url"] == chain.anvil.url
    assert chain.anvil.url in (home / "config.toml").read_text()  # saved, as login's own --rpc-url does


def test_help_names_the_global_options_once() -> None:
    text = run("escrow", "deposit", "--help").stdout
    assert "--json" in text and "Global options (--rpc-url," in text and "see `nodeai --help`" in text
    assert text.count("--rpc-url") == 1  # hidden from the option list, named in the note
