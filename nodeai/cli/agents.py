"""``nodeai agents create|run|list``: agents (specs on IPFS, registered on chain) and their escrowed jobs.

Placeholder until the module is written.
"""

from __future__ import annotations

import click


@click.group("agents")
def agents() -> None:
    """Agents: publish a spec, run it as an escrowed job."""
