"""``python -m nodeai.node init|run|worker|status|logs``: the daemon's commands without the ``nodeai`` CLI."""

from nodeai.node.cli import main

if __name__ == "__main__":
    main(prog_name="python -m nodeai.node")
