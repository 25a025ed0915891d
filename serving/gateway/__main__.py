"""Run the gateway: ``python -m nodeai.serving.gateway --config gateway.toml [--port 8000 ...]``.

Every top-level scalar option of ``GatewayConfig`` is also a flag (generated
from the config's fields and docstrings); flags override the file.
``--create-api-key LABEL`` adds a key to ``api_keys_file``, prints it once and exits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence

from nodeai.errors import NodeAIError

from .config import GatewayConfig, build_app, load_config

_SCALARS = (str, int, float, Path)


def _flag_type(annotation: Any) -> Any:
    """The argparse type of a scalar (optional) field, else None (set those in the file)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0]) if len(args) == 1 else None
    if origin is typing.Literal:
        return str
    return annotation if annotation in _SCALARS or annotation is bool else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nodeai.serving.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="JSON or TOML gateway config (options below override it)")
    p.add_argument("--create-api-key", metavar="LABEL", help="add an API key to api_keys_file, print it, exit")
    p.add_argument("--api-key-payer", metavar="ADDRESS", help="address receipts of the new key name as payer")
    for name, field in GatewayConfig.model_fields.items():
        kind = _flag_type(field.annotation)
        if kind is None:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = " ".join((field.description or "").split())
        if kind is bool:
            p.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            p.add_argument(flag, type=kind, default=None, help=help_text)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    config_path, label, payer = args.pop("config"), args.pop("create_api_key"), args.pop("api_key_payer")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(config_path, args)
        if label is not None:
            from ..apikeys import ZERO_ADDRESS, ApiKeyStore

            if config.api_keys_file is None:
                raise NodeAIError("set api_keys_file to create API keys")
            key = ApiKeyStore.load(config.api_keys_file.expanduser()).create(label, payer or ZERO_ADDRESS)
            print(key)
            return 0
        app = build_app(config)
    except NodeAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    # NOTE: one worker: the ledger's reservations live in this process (see ledger.py).
    uvicorn.run(app, host=config.host, port=config.port, workers=1, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
