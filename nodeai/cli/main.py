"""The top-level ``nodeai`` group: global network options, command groups, error handling, exit codes.

Every error is caught here, once: a user's mistake (bad input, wrong
password, a transaction the contract refuses in its dry run) prints one
line saying what to do next and exits 2; a failure (a node down, a check
that did not pass) exits 1; a bug prints a traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import click

from nodeai import __version__
from nodeai.cli.config import load_settings, nodeai_home
from nodeai.cli.context import CliContext, example
from nodeai.cli.global_options import apply_all, attach, root_options
from nodeai.cli.errors import EXIT_FAILURE, EXIT_USER_ERROR, CliError, MissingComponent
from nodeai.errors import ChainIdMismatch, ContractReverted, DeploymentNotFound, NodeAIError


def classify(exc: BaseException) -> tuple[int, str, str, str | None]:
    """(exit code, error type, message, hint) of an exception that reached the top."""
    if isinstance(exc, CliError):
        kind = "user_error" if exc.exit_code == EXIT_USER_ERROR else type(exc).__name__
        return exc.exit_code, kind, exc.message, exc.hint
    if isinstance(exc, ContractReverted):
        return (EXIT_USER_ERROR, "contract_reverted", f"the contract refused {exc.function}: {exc.reason}",
                "nothing was sent (the dry run caught it); check the state with `nodeai jobs show` / "
                "`nodeai escrow balance` and retry when the action is allowed")  # fmt: skip
    from nodeai.keystore import KeystoreError

    if isinstance(exc, (ChainIdMismatch, DeploymentNotFound, KeystoreError)):
        return EXIT_USER_ERROR, "user_error", str(exc), None
    if isinstance(exc, NodeAIError):
        return EXIT_FAILURE, type(exc).__name__, str(exc), None
    import requests

    if isinstance(exc, (requests.RequestException, ConnectionError)):
        return (EXIT_FAILURE, "unavailable", f"a service did not answer: {exc}",
                "check that the chain node, the indexer and IPFS are running (`nodeai whoami` shows the URLs)")  # fmt: skip
    from web3.exceptions import TimeExhausted

    if isinstance(exc, TimeExhausted):
        return (EXIT_FAILURE, "timeout", f"the transaction was not mined in time: {exc}",
                "it may still be mined: look it up before sending it again")  # fmt: skip
    return (EXIT_FAILURE, "internal_error", f"{type(exc).__name__}: {exc}",
            "this is a bug in nodeai; rerun with --debug for the traceback and report it")  # fmt: skip


def report(obj: CliContext | None, exc: BaseException) -> int:
    code, kind, message, hint = classify(exc)
    if obj is not None and obj.json:
        click.echo(json.dumps({"error": {"type": kind, "message": message, "hint": hint, "exit_code": code}}, indent=2))
    else:
        click.echo(f"error: {message}", err=True)
        if hint:
            click.echo(f"hint: {hint}", err=True)
    if obj is not None and obj.debug:
        traceback.print_exception(exc, file=sys.stderr)
    return code


class NodeAIGroup(click.Group):
    """A group whose invocation turns every exception into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every error is reported
            raise click.exceptions.Exit(report(ctx.find_object(CliContext), exc)) from None
        finally:
            obj = ctx.find_object(CliContext)
            if obj is not None:
                obj.close()


@click.group(cls=NodeAIGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@root_options
@click.version_option(__version__, prog_name="nodeai")
@click.pass_context
@example("""
nodeai login --create --rpc-url http://127.0.0.1:8545
nodeai models deploy ./models/llm-small --price 0.002
nodeai agents create treasury-bot --tools=rpc,sql,ipfs --budget=50
nodeai agents run treasury-bot --input "Rebalance to 60/40"
nodeai jobs list --mine --json
""")
def cli(ctx: click.Context, **options: Any) -> None:
    """NodeAI Hub: publish models, run agents, pay for inference, check receipts, from the command line.

    Settings come from flags, then NODEAI_* environment variables, then
    $NODEAI_HOME/config.toml (written by `nodeai login`; NODEAI_HOME defaults
    to ~/.nodeai). The options below may also follow the command
    (`nodeai jobs list --json`). Amounts are in token units (12.5) unless
    --raw is given. Exit codes: 0 ok, 1 failure, 2 user error.
    """
    home = nodeai_home()
    ctx.obj = CliContext(home=home, settings=load_settings(home))
    apply_all(ctx.obj, options)


FOREIGN_GROUPS = ("node", "logs")


def _mount() -> None:
    from nodeai.cli import agents, dev, escrow, infer, jobs, models, receipts, wallet

    cli.add_command(wallet.login)
    cli.add_command(wallet.whoami)
    cli.add_command(infer.infer)
    for group in (models.models, agents.agents, jobs.jobs, escrow.escrow, receipts.receipts, dev.dev):
        cli.add_command(group)
    try:
        from nodeai.node.cli import logs, node
    except ModuleNotFoundError as exc:
        if exc.name not in ("nodeai.node.cli", "nodeai.node"):
            raise
        cli.add_command(_missing("node", "nodeai node init|run|status"))
        cli.add_command(_missing("logs", "nodeai logs -f"))
    else:
        cli.add_command(node, "node")
        cli.add_command(logs, "logs")


def _missing(name: str, usage: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"Provider daemon commands ({usage}); need the provider daemon (nodeai.node.cli).")  # fmt: skip
    def command() -> None:
        raise MissingComponent("nodeai.node.cli (the provider daemon)", f"`{usage}`")

    return command


_mount()
# NOTE: after every command is mounted; the provider daemon's groups parse their own options (--config).
attach(cli, skip=FOREIGN_GROUPS)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nodeai`` console script; returns the exit code."""
    try:
        # NOTE: without standalone mode click returns the code of an Exit instead of raising it,
        # and the command's own return value (None for every nodeai command) otherwise.
        result = cli.main(args=argv, prog_name="nodeai", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
