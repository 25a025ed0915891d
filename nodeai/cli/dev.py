"""``nodeai dev up|down|faucet``: a whole marketplace on this machine, and test tokens on its chain.

``up`` starts ``scripts/demo.py --keep-running`` in the background (its own
session, its output in ``WORKDIR/marketplace.log``): an anvil chain with the
contracts, a model publisher, a provider serving SmolLM2 through its paid
gateway and its daemon, the indexer with its explorer. It returns once the
demo has run through and the marketplace is ready for you, which the demo
says by writing ``WORKDIR/env.sh`` (the ``NODEAI_*`` variables to ``source``)
and ``WORKDIR/local.json`` (the same, plus the PIDs). ``down`` stops it by its
PID, then whatever it left of the helpers it recorded in ``WORKDIR/helpers.pids``. ``faucet`` gives an address ETH (gas) and test tokens on a local anvil
chain: it impersonates the token's minter, which only a development chain allows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from eth_utils import is_address, to_checksum_address

from nodeai.cli.context import CliContext, example, pass_ctx
from nodeai.cli.errors import CliError, MissingComponent, UserError
from nodeai.cli.output import check_amount, emit, parse_amount, parse_duration, status

DEFAULT_WORKDIR = "~/nodeai-local"
ENV_FILE = "env.sh"
STATE_FILE = "local.json"
PID_FILE = "marketplace.pid"
LOG_FILE = "marketplace.log"


def demo_script() -> Path:
    """``scripts/demo.py`` of the checkout this package is installed from (``pip install -e .``)."""
    import nodeai

    script = Path(nodeai.__file__).resolve().parents[1] / "scripts" / "demo.py"
    if not script.is_file():
        raise MissingComponent("scripts/demo.py (a checkout of the repository)", "`nodeai dev up`")
    return script


@click.group("dev")
@example("""
nodeai dev up --workdir ~/nodeai-local && source ~/nodeai-local/env.sh
nodeai dev faucet --amount 100
nodeai dev down --workdir ~/nodeai-local
""")
def dev() -> None:
    """A local marketplace for development: start it, fund wallets on its chain, stop it."""


# -- the background process ------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    """``pid`` runs, is not a zombie, and is the demo (not another program that got the PID since)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and b"demo.py" in cmdline


def _pid(workdir: Path) -> int | None:
    try:
        return int((workdir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _read_state(workdir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((workdir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _log_tail(workdir: Path, chars: int = 2_000) -> str:
    try:
        return (workdir / LOG_FILE).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _summary(state: dict[str, Any], workdir: Path) -> str:
    env = state["env"]
    return "\n".join([
        f"local marketplace is up (pid {state['pid']}), work folder {workdir}",
        f"  chain      {env['NODEAI_RPC_URL']} (chain id {env['NODEAI_CHAIN_ID']})",
        f"  gateway    {env['NODEAI_GATEWAY_URL']} (provider {env['NODEAI_PROVIDER']})",
        f"  model      {env['NODEAI_MODEL']} (#{env['NODEAI_MODEL_ID']}, {state.get('price', '?')} per 1k tokens)",
        f"  indexer    {env['NODEAI_INDEXER_URL']}",
        f"  explorer   {env['NODEAI_EXPLORER_URL']}",
        f"  log        {workdir / LOG_FILE}",
        *([f"  home       {env['NODEAI_HOME']} (NODEAI_HOME: the wallet and settings of `nodeai login`)"]
          if env.get("NODEAI_HOME") else []),
        f"next: `source {workdir / ENV_FILE}`, then `nodeai login --create`",
    ])  # fmt: skip


@dev.command("up")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR, show_default=True,
              help="Folder for the chain's deployments, IPFS repos, keystores, logs, env.sh and home/ (the NODEAI_HOME "
                   "env.sh sets: your wallet for this marketplace); kept after `down`.")
@click.option("--timeout", "timeout_text", default="10m", show_default=True,
              help="Give up (and stop it) if it is not ready after this long.")
@click.option("--threads", type=int, help="llama.cpp threads (default: the demo's, one core left to the rest).")
@pass_ctx
@example("""
nodeai dev up --workdir ~/nodeai-local
source ~/nodeai-local/env.sh
""")
def up(obj: CliContext, workdir: Path, timeout_text: str, threads: int | None) -> None:
    """Start the local marketplace in the background; return when it is ready (about 15 s on an idle 2-core
    machine, up to a minute on a busy one).

    It runs the demo (a model published, a provider serving it, a paid inference,
    an agent job settled, every balance checked), then keeps everything up for
    you: the chain mines a block every second, the provider settles vouchers and
    receipts at once, and it serves every agent registered on its model.
    """
    timeout = parse_duration(timeout_text)
    workdir = workdir.expanduser().resolve()
    pid = _pid(workdir)
    state = _read_state(workdir)
    if pid is not None and _alive(pid):
        if state is None or state.get("pid") != pid:
            raise UserError(f"a local marketplace (pid {pid}) is starting or running in {workdir} but is not ready",
                            f"wait for it, or stop it with `nodeai dev down --workdir {workdir}`")
        emit(obj.json, state | {"already_running": True}, _summary(state, workdir))
        return
    script = demo_script()
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (ENV_FILE, STATE_FILE):
        (workdir / name).unlink(missing_ok=True)  # NOTE: readiness is these files appearing
    args = [sys.executable, str(script), "--keep-running", "--workdir", str(workdir)]
    if threads:
        args += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAI_NODE__")}
    started = time.monotonic()
    with open(workdir / LOG_FILE, "wb") as log:
        # NOTE: a session of its own, so closing this terminal or a Ctrl-C here does not reach it; the
        # working directory is the work folder because the embedded kubo library writes ./kubo.log.
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                                   env=env | {"PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
    (workdir / PID_FILE).write_text(f"{process.pid}\n")
    status(f"  starting the local marketplace (pid {process.pid}); log {workdir / LOG_FILE}")
    shown = 0
    while True:
        state = _read_state(workdir)
        if state is not None and state.get("pid") == process.pid:
            break
        lines = _log_tail(workdir, 1_000_000).splitlines()
        for line in lines[shown:]:
            if line.startswith("== "):
                status(f"  {line[3:]}  [{time.monotonic() - started:.0f} s]")
        shown = len(lines)
        if process.poll() is not None:
            _stop(process.pid, workdir, 0)  # NOTE: a demo that died may have left anvil or the indexer behind
            raise CliError(f"the local marketplace exited with code {process.returncode} before it was ready; "
                           f"the end of {workdir / LOG_FILE}:\n{_log_tail(workdir)}",
                           "fix what the log says (run `make setup` first?), then run `nodeai dev up` again")  # fmt: skip
        if time.monotonic() - started > timeout:
            _stop(process.pid, workdir, 30)
            raise CliError(f"the local marketplace was not ready after {timeout_text}; stopped it. The end of "
                           f"{workdir / LOG_FILE}:\n{_log_tail(workdir)}",
                           "a loaded machine is slower: retry with a longer --timeout")  # fmt: skip
        time.sleep(0.5)
    state["seconds"] = round(time.monotonic() - started, 1)
    emit(obj.json, state, lambda: _summary(state, workdir) + f"\n(ready in {state['seconds']:.0f} s)")


HELPER_NAMES = (b"anvil", b"nodeai.indexer", b"demo.py")
"""What the command line of a process of the local marketplace contains (checked before any signal)."""


def _ours(pid: int) -> bool:
    """``pid`` runs (not a zombie) and is anvil, the indexer or the demo: not a program that got the PID since."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and any(name in cmdline for name in HELPER_NAMES)


def _group_members(pgid: int) -> list[int]:
    """The PIDs of the processes in process group ``pgid`` that are the marketplace's (by their command line)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and _ours(int(entry.name)):
            members.append(int(entry.name))
    return members


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # NOTE: gone since it was checked (or never ours to stop)


def _stop(pid: int, workdir: Path, timeout: float) -> str:
    """Stop the demo and every helper it started; "stopped" if it stopped on SIGTERM, "killed" if not.

    SIGTERM first (the demo stops its daemon, gateway, IPFS nodes, indexer and anvil in order), then SIGKILL
    to its process group (it is a session leader: anvil is in the group, the indexer in a session of its
    own). Whatever the demo left, the helpers recorded in WORKDIR/helpers.pids (and local.json) and the
    members of its group are stopped too, each after its /proc/PID/cmdline shows it is anvil, the indexer
    or the demo.
    """
    from nodeai.demo import read_helper_pids

    action = "stopped"
    if _alive(pid):
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            action = "killed"
            try:
                if os.getpgid(pid) == pid:  # NOTE: checked alive and the demo just now: the group is its own
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    helpers = {p for _, p in read_helper_pids(workdir)}
    helpers |= {int(p) for p in ((_read_state(workdir) or {}).get("child_pids") or {}).values() if str(p).isdigit()}
    helpers |= set(_group_members(pid))
    left = [p for p in helpers if p != pid and _ours(p)]
    for helper in left:
        _signal(helper, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_ours(p) for p in left):
        time.sleep(0.1)
    for helper in left:
        if _ours(helper):
            _signal(helper, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_ours(p) for p in [pid, *left]):
        time.sleep(0.1)
    return action


@dev.command("down")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_WORKDIR, show_default=True,
              help="The folder `nodeai dev up` used.")
@click.option("--timeout", "timeout_text", default="60s", show_default=True, help="Kill it if it has not stopped after this long.")
@pass_ctx
@example("""
nodeai dev down --workdir ~/nodeai-local
""")
def down(obj: CliContext, workdir: Path, timeout_text: str) -> None:
    """Stop the local marketplace that `nodeai dev up` started (by its PID); the work folder stays."""
    timeout = parse_duration(timeout_text)
    workdir = workdir.expanduser().resolve()
    pid = _pid(workdir)
    if pid is None or not _alive(pid):
        if pid is not None:
            _stop(pid, workdir, 0)  # NOTE: the demo is gone, but a killed one leaves its helpers running
        emit(obj.json, {"workdir": str(workdir), "pid": pid, "action": "none"},
             f"no local marketplace runs in {workdir}")
        return
    started = time.monotonic()
    action = _stop(pid, workdir, timeout)
    (workdir / PID_FILE).unlink(missing_ok=True)
    seconds = round(time.monotonic() - started, 1)
    emit(obj.json, {"workdir": str(workdir), "pid": pid, "action": action, "seconds": seconds},
         f"{action} the local marketplace (pid {pid}) in {seconds:.1f} s; its files stay in {workdir}")


# -- faucet ------------------------------------------------------------------------------------------
@dev.command("faucet")
@click.argument("address", required=False)
@click.option("--amount", default="100", show_default=True, help="Test tokens to mint, in token units.")
@click.option("--eth", "eth_amount", default="1", show_default=True, help="ETH for gas to add (0: none).")
@click.option("--raw", is_flag=True, help="--amount is in base units.")
@pass_ctx
@example("""
nodeai dev faucet                      # this wallet: 100 TUSD and 1 ETH
nodeai dev faucet 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --amount 5000 --json
""")
def faucet(obj: CliContext, address: str | None, amount: str, eth_amount: str, raw: bool) -> None:
    """Give ADDRESS (default: this wallet) test tokens and ETH on a local anvil chain.

    It mints as the token's minter by impersonating it (anvil_impersonateAccount) and
    sets the ETH balance (anvil_setBalance): development chains only. On a real
    network, get the payment token (USDC) and ETH the usual way.
    """
    check_amount(amount)
    eth = check_amount(eth_amount, "--eth")
    target = to_checksum_address(address) if address and is_address(address) else None
    if address and target is None:
        raise UserError(f"{address!r} is not an address", "give a 0x address, or none for this wallet")
    target = target or obj.address
    w3 = obj.w3
    client = str(w3.client_version)
    if not client.lower().startswith("anvil"):
        raise UserError(f"the chain at {obj.settings.rpc_url} is {client}, not a local anvil chain: it has no faucet",
                        "get test tokens from the network's own faucet, or run `nodeai dev up` for a local marketplace")
    token = obj.token
    units = parse_amount(amount, obj.decimals, raw)
    minter = to_checksum_address(obj.deployment.deployer)
    if not token.functions.is_minter(minter).call():
        minter = token.functions.owner().call()
        if not token.functions.is_minter(minter).call():
            raise UserError(f"neither the deployer nor the owner of {obj.symbol} may mint it",
                            "this faucet needs the test token of `nodeai-deploy`")
    wei = int(eth * 10**18) if eth else 0
    if wei:
        w3.provider.make_request("anvil_setBalance", [target, hex(w3.eth.get_balance(target) + wei)])
    tx_hash = None
    if units:
        fn = token.functions.mint(target, units)
        fn.call({"from": minter})  # NOTE: the dry run: a refusal is reported before anything is sent
        w3.provider.make_request("anvil_impersonateAccount", [minter])
        try:
            w3.provider.make_request("anvil_setBalance", [minter, hex(max(w3.eth.get_balance(minter), 10**18))])
            sent = fn.transact({"from": minter})
            receipt = w3.eth.wait_for_transaction_receipt(sent, timeout=60)
        finally:
            w3.provider.make_request("anvil_stopImpersonatingAccount", [minter])
        if receipt["status"] != 1:
            raise CliError(f"mint to {target} failed in block {receipt['blockNumber']}", "retry; check the anvil log")
        tx_hash = "0x" + bytes(sent).hex().removeprefix("0x")
    balance = token.functions.balanceOf(target).call()
    data = {"address": target, "minted": units, "eth_added": wei, "token_balance": balance,
            "eth_balance": w3.eth.get_balance(target), "minter": minter, "tx": tx_hash}  # fmt: skip
    emit(obj.json, data, lambda: f"sent {obj.fmt(units)} and {eth_amount} ETH to {target}; "
         f"it now holds {obj.fmt(balance)} and {data['eth_balance'] / 10**18:g} ETH")  # fmt: skip
