"""The global options (``--rpc-url``, ``--json``, ...), accepted before and after the subcommand.

``nodeai --json jobs list``, ``nodeai jobs --json list`` and ``nodeai jobs list --json``
mean the same. One table, :data:`GLOBAL_OPTIONS`, defines them:

* :func:`root_options` puts them on the top-level group, with their
  environment variables (``NODEAI_RPC_URL``, ...);
* :func:`attach` copies them onto every group and command below it (without
  the environment variables, so a variable never overrides a flag given before
  the subcommand).

Precedence, highest first: the flag after the subcommand, the flag before it,
the environment variable, ``$NODEAI_HOME/config.toml``, the defaults. A
command that has an option of the same name itself (``login --rpc-url``, which
also saves it) keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import click

from nodeai.cli.context import CliContext

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class GlobalOption:
    flag: str
    """The option as typed: ``--rpc-url``."""
    dest: str
    """A field of :class:`nodeai.cli.config.Settings`, or ``json`` / ``debug`` (fields of the context)."""
    help: str
    envvar: str | None = None
    type: Any = None
    is_flag: bool = False
    path: bool = False
    """A file path: made absolute against the working directory the command runs in."""
    shown_below: bool = False
    """Listed in every command's --help (the others are accepted there too, and named in one line)."""

    def click_type(self) -> Any:
        return click.Path(dir_okay=False) if self.path else self.type

    def apply(self, obj: CliContext, value: Any) -> None:
        """Put a value given for this option into the context (None / False: not given)."""
        if value is None or value is False:
            return
        if self.dest in ("json", "debug"):
            setattr(obj, self.dest, True)
            return
        if self.path:
            value = str(Path(value).expanduser().resolve())
        obj.settings = obj.settings.merged(**{self.dest: value})


GLOBAL_OPTIONS: tuple[GlobalOption, ...] = (
    GlobalOption("--rpc-url", "rpc_url", "JSON-RPC URL of the chain [config: network.rpc_url].", "NODEAI_RPC_URL"),
    GlobalOption("--chain-id", "chain_id", "Expected chain id, checked against the RPC.", "NODEAI_CHAIN_ID", type=int),
    GlobalOption("--deployments", "deployments", "Deployments file with the contracts' addresses and ABIs.",
                 "NODEAI_DEPLOYMENTS", path=True),
    GlobalOption("--indexer-url", "indexer_url", "Base URL of the indexer's HTTP API (lists).", "NODEAI_INDEXER_URL"),
    GlobalOption("--keystore", "keystore", "Encrypted JSON keystore of the wallet [default: $NODEAI_HOME/keystore.json].",
                 "NODEAI_KEYSTORE", path=True),
    GlobalOption("--ipfs-api", "ipfs_api", "kubo RPC API URL; unset: the embedded IPFS node.", "NODEAI_IPFS_API"),
    GlobalOption("--ipfs-peers", "ipfs_peers",
                 "Comma-separated multiaddrs (/ip4/H/tcp/P/p2p/ID) the embedded IPFS node dials on start, e.g. "
                 "a provider's node, so it can fetch what you pin and you what it pins.", "NODEAI_IPFS_PEERS"),
    GlobalOption("--json", "json", "Print one JSON document (for scripts) instead of text.", is_flag=True, shown_below=True),
    GlobalOption("--debug", "debug", "Show tracebacks of internal errors.", "NODEAI_DEBUG", is_flag=True),
)

# NOTE: one line in each command's help instead of eight more option rows in every listing.
_NOTE = ("Global options ({}) are accepted after the command too; see `nodeai --help`."
         .format(", ".join(o.flag for o in GLOBAL_OPTIONS if not o.shown_below)))


def root_options(fn: F) -> F:
    """Decorate the top-level group with every global option (with its environment variable)."""
    for option in reversed(GLOBAL_OPTIONS):
        fn = click.option(option.flag, option.dest, type=option.click_type(), envvar=option.envvar,
                          is_flag=option.is_flag, help=option.help)(fn)  # fmt: skip
    return fn


def apply_all(obj: CliContext, values: dict[str, Any]) -> None:
    """The top-level group's values (flags before the subcommand, else environment) into the context."""
    for option in GLOBAL_OPTIONS:
        option.apply(obj, values.get(option.dest))


def _copy(option: GlobalOption) -> click.Option:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        obj = ctx.find_object(CliContext)
        if obj is not None:  # NOTE: None only while click completes a command line (resilient parsing)
            option.apply(obj, value)

    return click.Option([option.flag, f"global_{option.dest}"], type=option.click_type(), is_flag=option.is_flag,
                        default=None if not option.is_flag else False, expose_value=False, callback=callback,
                        # NOTE: flags first, so --json already holds when a later option's callback fails
                        is_eager=option.is_flag, hidden=not option.shown_below, help=option.help)  # fmt: skip


def attach(group: click.Group, skip: Iterable[str] = ()) -> None:
    """Copy the global options onto every group and command below ``group`` (recursively), except ``skip``."""
    skipped = set(skip)
    for name, command in group.commands.items():
        if name in skipped:
            continue
        taken = {opt for param in command.params for opt in getattr(param, "opts", ())}
        added = [option for option in GLOBAL_OPTIONS if option.flag not in taken]
        command.params.extend(_copy(option) for option in added)
        if any(not option.shown_below for option in added):
            command.epilog = f"{command.epilog}\n\n{_NOTE}" if command.epilog else _NOTE
        if isinstance(command, click.Group):
            attach(command)
