"""Every command documents itself with an example; the installed ``nodeai`` script keeps the exit-code contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nodeai.chain.anvil import ANVIL_KEYS
from nodeai.cli.main import cli
from tests.cli.conftest import PASSWORD, ROLES, Chain, Indexer, run, write_wallet

# NOTE: mounted from the provider daemon's module, which documents its own subcommands.
FOREIGN = {"node", "logs"}


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in sorted(group.commands.items()):
        here = (*path, name)
        found.append(here)
        if isinstance(command, click.Group) and name not in FOREIGN:
            found += _commands(command, here)
    return found


ALL = _commands(cli)


def test_the_command_set_of_issue_7_is_there() -> None:
    expected = {("login",), ("models", "deploy"), ("models", "list"), ("agents", "create"), ("agents", "run"),
                ("jobs", "list"), ("jobs", "show"), ("jobs", "dispute"), ("jobs", "refund"), ("escrow", "deposit"),
                ("escrow", "withdraw"), ("escrow", "balance"), ("receipts", "verify"), ("node",), ("logs",)}  # fmt: skip
    assert expected <= set(ALL)


@pytest.mark.parametrize("path", [(), *ALL], ids=lambda p: " ".join(p) or "nodeai")
def test_help_shows_an_example(path: tuple[str, ...]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    if path and path[0] in FOREIGN:
        assert f"nodeai {path[0]}" in text  # their examples are inline lines
    else:
        assert "Example:" in text and "\n    nodeai " in text
        if path and path[-1] not in ("models", "agents", "jobs", "escrow", "receipts"):
            assert "--json" in text  # every leaf command speaks JSON


def _nodeai() -> str:
    script = Path(sys.executable).parent / "nodeai"
    assert script.is_file(), "the console script is missing: run `pip install --no-deps --no-build-isolation -e .`"
    return str(script)


def test_installed_script_exit_codes(chain: Chain, indexer: Indexer, home: Path) -> None:
    write_wallet(home, chain, ANVIL_KEYS[ROLES.index("requester")], indexer.url)
    job_id, _ = chain.market.create_job(chain.model_id, b"from a real process", 1_000_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAI_") or k == "NODEAI_TEST_HOME"}
    env |= {"NODEAI_HOME": str(home), "NODEAI_PASSWORD": PASSWORD}

    def nodeai(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_nodeai(), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    ok = nodeai("jobs", "show", str(job_id), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "OPEN"

    user = nodeai("escrow", "deposit", "ten", "--provider", chain.market.address("provider"))
    assert user.returncode == 2 and user.stderr.startswith("error: amount 'ten' is not a number")
    assert "hint:" in user.stderr and "Traceback" not in user.stderr and user.stdout == ""

    env["NODEAI_RPC_URL"] = "http://127.0.0.1:9"  # nothing listens there
    down = nodeai("jobs", "show", str(job_id))
    assert down.returncode == 1 and "cannot reach the chain" in down.stderr and "Traceback" not in down.stderr
