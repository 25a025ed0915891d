"""Command line of the provider daemon: ``nodeai node init|run|worker|status`` and ``nodeai logs``.

The ``nodeai`` CLI mounts :data:`node` and :data:`logs`; ``python -m nodeai.node``
runs them on their own. Exit codes: 0 success, 1 failure (a node down, a
transaction that failed), 2 an error the operator can fix (config, keystore
password, wrong chain, a model that is not registered).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from typing import TYPE_CHECKING

from nodeai.errors import ChainIdMismatch, DeploymentNotFound, NodeAIError
from nodeai.keystore import KeystoreError
from nodeai.node.errors import StartupError

if TYPE_CHECKING:
    from nodeai.node.config import NodeConfig

# NOTE: heavy modules (pydantic, web3, the daemon) are imported inside the commands, so
# `nodeai --help`, which mounts this group, stays fast.

__all__ = ["node", "logs", "main"]

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


def exit_code(exc: NodeAIError) -> int:
    """2 for what the operator can fix (config, keystore, a start-up check), 1 for failures."""
    from nodeai.node.config import ConfigError

    user = (ConfigError, KeystoreError, StartupError, ChainIdMismatch, DeploymentNotFound)
    return EXIT_USER_ERROR if isinstance(exc, user) else EXIT_FAILURE


@contextmanager
def _errors() -> Iterator[None]:
    """Operator mistakes -> one line and exit 2; other failures -> one line and exit 1; no tracebacks."""
    try:
        yield
    except NodeAIError as exc:
        click.echo(f"error: {exc}", err=True)
        raise click.exceptions.Exit(exit_code(exc)) from None


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=Path("node.toml"),
    show_default=True, help="The daemon's TOML config file.")  # fmt: skip


@click.group("node", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def node() -> None:
    """Run a provider node: serve models, claim and execute jobs, settle on chain.

    \b
    nodeai node init --config node.toml          # write a commented example config
    nodeai login --import --keystore ~/.nodeai/provider.json
    nodeai node run --config node.toml           # register/update on chain, then run the job loop
    nodeai node status --config node.toml
    nodeai logs -f --config node.toml
    """


@node.command("init")
@config_option
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path, force: bool) -> None:
    """Write a commented example config listing every option with its default.

    \b
    nodeai node init --config node.toml
    """
    from nodeai.node.config import example_config

    if config_path.exists() and not force:
        click.echo(f"error: {config_path} exists: pass --force to overwrite it, or choose another --config", err=True)
        raise click.exceptions.Exit(EXIT_USER_ERROR)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(example_config())
    click.echo(f"wrote {config_path}: set provider.endpoint, provider.stake, provider.models and keystore.path, "
               f"then `nodeai node run --config {config_path}`")


def _account(config: "NodeConfig", prompt: bool) -> object:
    from nodeai.keystore import load_account, resolve_password

    password = resolve_password(file=config.keystore.password_file, env_var=config.keystore.password_env,
                                prompt=prompt, label=str(config.keystore.path))
    return load_account(config.keystore.path, password)


def _setup_logging(config: "NodeConfig", quiet: bool) -> None:
    from nodeai.node.logs import configure_logging

    configure_logging(config.logging.level, config.logging.json_format, config.log_path, stderr=not quiet)


@node.command("run")
@config_option
@click.option("--quiet", is_flag=True, help="Log to the log file only, not to stderr.")
def run(config_path: Path, quiet: bool) -> None:
    """Check the chain, reconcile the registration, then run the job loop until SIGTERM/SIGINT.

    \b
    NODEAI_KEYSTORE_PASSWORD=... nodeai node run --config node.toml
    NODEAI_NODE__CHAIN__RPC_URL=http://10.0.0.5:8545 nodeai node run --config node.toml
    """
    from nodeai.node.config import load_config
    from nodeai.node.loop import ProviderDaemon

    with _errors():
        config = load_config(config_path)
        account = _account(config, prompt=sys.stdin.isatty())
        _setup_logging(config, quiet)
        daemon = ProviderDaemon(config, account)  # type: ignore[arg-type]
        _run_until_signal(daemon.run)


@node.command("worker")
@config_option
@click.option("--quiet", is_flag=True, help="Log to the log file only, not to stderr.")
def worker(config_path: Path, quiet: bool) -> None:
    """Execute jobs from the NATS JetStream queue (scale-out; needs queue.mode = "nats").

    The worker holds no key: it runs jobs and hands results to the daemon, which submits them.

    \b
    nodeai node worker --config node.toml
    """
    from nodeai.node.config import load_config
    from nodeai.node.loop import run_worker

    with _errors():
        config = load_config(config_path)
        _setup_logging(config, quiet)
        _run_until_signal(lambda stop: run_worker(config, stop))


def _run_until_signal(main: object) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())


@node.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--jobs", "show", type=int, default=10, show_default=True, help="How many recent jobs to list.")
def status(config_path: Path, as_json: bool, show: int) -> None:
    """Jobs by state and the most recent jobs, from the daemon's state (no password needed).

    \b
    nodeai node status --config node.toml --json
    """
    from nodeai.node.config import ConfigError, load_config
    from nodeai.node.state import StateStore

    with _errors():
        config = load_config(config_path)
        if not config.db_path.is_file():
            raise ConfigError(f"no daemon state at {config.db_path}: the daemon has not run with this config yet")
        state = StateStore(config.db_path)
        try:
            counts = {k: v for k, v in state.counts().items() if v}
            records = sorted(state.all(), key=lambda r: r.updated_at, reverse=True)[:show]
            provider = state.get_meta("provider")
        finally:
            state.close()
        recent = [{"job_id": r.job_id, "phase": r.phase.value, "model_id": r.job.model_id, "charge": r.charge,
                   "output_cid": r.output_cid, "reason": r.reason} for r in records]  # fmt: skip
        port_file = config.state_path / "http.port"
        health = _health(int(port_file.read_text())) if port_file.is_file() else None
        if as_json:
            click.echo(json.dumps({"provider": provider, "jobs": counts, "recent": recent, "health": health}, indent=2))
            return
        click.echo(f"provider  {provider or '(unknown)'}")
        click.echo(f"daemon    {health['status'] if health else 'not running'}")
        click.echo("jobs      " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
        for r in recent:
            click.echo(f"  job {r['job_id']:>6}  {r['phase']:<14} model {r['model_id']:<4} "
                       f"charge {r['charge'] if r['charge'] is not None else '-':<10} {r['reason'] or ''}")


def _health(port: int) -> dict | None:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


@click.command("logs", context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), help="Log file (default: from the config).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("-n", "--lines", type=int, default=20, show_default=True, help="Lines of history to print first.")
def logs(config_path: Path, file: Path | None, follow: bool, lines: int) -> None:
    """Print the daemon's log; with -f keep following it (across rotations).

    \b
    nodeai logs -f --config node.toml
    nodeai logs -n 100 --file /var/lib/nodeai/node.log
    """
    from nodeai.node.config import load_config
    from nodeai.node.logs import follow_logs

    with _errors():
        path = file or load_config(config_path if config_path.is_file() else None).log_path
    if not follow:
        if not path.is_file():
            click.echo(f"error: no log file at {path}: has the daemon run with this config?", err=True)
            raise click.exceptions.Exit(EXIT_USER_ERROR)
        for line in path.read_text(errors="replace").splitlines()[-lines:] if lines else []:
            click.echo(line)
        return
    try:
        for line in follow_logs(path, lines=lines):
            click.echo(line)
    except KeyboardInterrupt:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    """The provider daemon on its own: `python -m nodeai.node run --config node.toml` is `nodeai node run ...`."""


for _command in (*node.commands.values(), logs):
    main.add_command(_command)
