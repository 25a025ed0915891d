"""``nodeai login`` and ``nodeai whoami``: the wallet (an encrypted keystore) and the network it talks to.

A private key never appears on the command line (it would land in shell
history and ``ps``) and is never written in plaintext: ``--import`` reads
it from a hidden prompt, or from stdin when stdin is a pipe, and only the
encrypted keystore reaches the disk.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from nodeai.cli import keys
from nodeai.cli.config import Settings, config_path, save_settings
from nodeai.cli.context import CliContext, example, pass_ctx
from nodeai.cli.errors import ServiceUnavailable, UserError
from nodeai.cli.output import emit, status


def _read_private_key() -> str:
    if sys.stdin.isatty():
        text = click.prompt("Private key (hidden)", hide_input=True, err=True)
    else:
        # NOTE: a pipe (`pass show wallet | nodeai login --import`): read one line, no prompt, no echo.
        text = sys.stdin.readline()
        if not text.strip():
            raise UserError("--import read no key from stdin", "pipe the key in, or run it in a terminal to be prompted")
    return keys.normalise_private_key(text)


def _check_network(obj: CliContext) -> dict[str, object]:
    """Connect, check the chain id and the deployments file; returns what login saves about the network."""
    deployment = obj.deployment  # connects, checks chain ids, finds the file
    deployments_file = obj.settings.deployments
    if not deployments_file:
        from nodeai.chain.deployments import DEPLOYMENTS_DIR

        deployments_file = str((DEPLOYMENTS_DIR / f"{deployment.chain_id}.json").resolve())
    return {"chain_id": deployment.chain_id, "deployments": deployments_file}


@click.command("login")
@click.option("--create", "mode", flag_value="create", help="Create a new key in a new encrypted keystore.")
@click.option("--import", "mode", flag_value="import",
              help="Import an existing key (read from a hidden prompt, or stdin when piped; never from arguments).")
@click.option("--rpc-url", help="JSON-RPC URL of the network to use.")
@click.option("--chain-id", type=int, help="Chain id the RPC must serve.")
@click.option("--deployments", type=click.Path(dir_okay=False, path_type=Path), help="Deployments file of that network.")
@click.option("--indexer-url", help="Indexer HTTP API of that network.")
@click.option("--ipfs-api", help="kubo RPC API URL (unset: embedded IPFS node).")
@click.option("--keystore", type=click.Path(dir_okay=False, path_type=Path),
              help="Where the encrypted keystore lives [default: $NODEAI_HOME/keystore.json].")
@click.option("--no-check", is_flag=True, help="Save the network settings without connecting to the chain.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the keystore password from this file (else $NODEAI_PASSWORD, else a hidden prompt).")
@pass_ctx
@example("""
nodeai login --create --rpc-url http://127.0.0.1:8545 --indexer-url http://127.0.0.1:8100
pass show my-wallet | nodeai login --import --password-file ~/.secrets/nodeai-pw
nodeai login            # unlock the existing keystore and check the network
""")
def login(obj: CliContext, mode: str | None, rpc_url: str | None, chain_id: int | None, deployments: Path | None,
          indexer_url: str | None, ipfs_api: str | None, keystore: Path | None, no_check: bool,
          password_file: Path | None) -> None:  # fmt: skip
    """Create or import a wallet (encrypted keystore) and choose the network.

    Without --create or --import, unlocks the existing keystore to check the
    password and saves the network settings. The settings go to
    $NODEAI_HOME/config.toml; the key only into the encrypted keystore.
    """
    obj.settings = obj.settings.merged(rpc_url=rpc_url, chain_id=chain_id, indexer_url=indexer_url, ipfs_api=ipfs_api,
                                       deployments=str(deployments.resolve()) if deployments else None,
                                       keystore=str(keystore.expanduser().resolve()) if keystore else None)  # fmt: skip
    obj.password_file = password_file or obj.password_file
    path = obj.keystore_path
    if mode and path.exists():
        raise UserError(f"a keystore already exists at {path} (wallet {keys.keystore_address(path)})",
                        "run `nodeai login` to use it, or pass --keystore NEW_PATH to keep both")
    if not mode and not path.exists():
        raise UserError(f"no keystore at {path}", "run `nodeai login --create` (new key) or `nodeai login --import`")

    network: dict[str, object] = {}
    if not no_check:
        network = _check_network(obj)  # before any key is written, so a typo in the URL costs nothing
    private_key = _read_private_key() if mode == "import" else None
    if mode:
        password = keys.resolve_password(obj.password_file, confirm=True, purpose=f"to encrypt {path}")
        status(f"  encrypting the keystore {path} ...")
        address = keys.create(path, password, private_key)
        del private_key
    else:
        address = obj.account().address

    settings: Settings = obj.settings.merged(keystore=str(path.resolve()), address=address, **network)  # type: ignore[arg-type]
    saved = save_settings(obj.home, settings)
    data = {
        "address": address,
        "keystore": str(path.resolve()),
        "config": str(saved),
        "action": {"create": "created", "import": "imported"}.get(mode or "", "unlocked"),
        "network": {k: getattr(settings, k) for k in ("rpc_url", "chain_id", "deployments", "indexer_url", "ipfs_api")},
        "checked": not no_check,
    }
    emit(obj.json, data, lambda: "\n".join([
        f"{data['action']} wallet {address}",
        f"keystore   {data['keystore']} (encrypted)",
        f"network    {settings.rpc_url} (chain id {settings.chain_id if settings.chain_id is not None else 'not checked'})",
        f"contracts  {settings.deployments or '-'}",
        f"indexer    {settings.indexer_url}",
        f"saved to   {config_path(obj.home)}",
        "next: `nodeai whoami`, `nodeai models list`, `nodeai escrow deposit 10 --provider ADDRESS`",
    ]))  # fmt: skip


@click.command("whoami")
@pass_ctx
@example("""
nodeai whoami
nodeai whoami --json | jq .address
""")
def whoami(obj: CliContext) -> None:
    """Show the wallet address, the network settings and the wallet's balances (no password needed)."""
    address = obj.address
    data: dict[str, object] = {
        "address": address,
        "keystore": str(obj.keystore_path),
        "network": obj.settings.as_dict() | {"keystore": str(obj.keystore_path)},
    }
    try:
        data["chain_id"] = obj.w3.eth.chain_id
        data["eth_balance"] = obj.w3.eth.get_balance(address)
        data["token"] = {"address": obj.token.address, "symbol": obj.symbol, "decimals": obj.decimals,
                         "balance": obj.token.functions.balanceOf(address).call()}  # fmt: skip
        data["connected"] = True
    except ServiceUnavailable as exc:
        data["connected"] = False
        data["problem"] = exc.message

    def human() -> str:
        lines = [f"wallet    {address}", f"keystore  {data['keystore']}", f"rpc       {obj.settings.rpc_url}",
                 f"indexer   {obj.settings.indexer_url}"]  # fmt: skip
        if data["connected"]:
            token = data["token"]
            lines += [f"chain id  {data['chain_id']}", f"ETH       {data['eth_balance'] / 10**18:.6f}",  # type: ignore[operator]
                      f"balance   {obj.fmt(token['balance'])}"]  # type: ignore[index]  # fmt: skip
        else:
            lines.append(f"offline   {data['problem']}")
        return "\n".join(lines)

    emit(obj.json, data, human)
