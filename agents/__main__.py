"""``python -m nodeai.agents``: create, validate, run and resume agents; decide approvals; verify transcripts.

::

    python -m nodeai.agents create treasury-bot --tools rpc,sql,ipfs --budget 50 > treasury-bot.json
    python -m nodeai.agents validate treasury-bot.json
    python -m nodeai.agents run treasury-bot.json --input "Rebalance to 60/40" --state agents.db \\
        --rpc 31337=http://127.0.0.1:8545 --keystore wallet.json --ipfs-repo ipfs-repo --result out.json
    python -m nodeai.agents approvals list --state agents.db
    python -m nodeai.agents approvals approve ap_0123 --state agents.db --by alice --note "ok"
    python -m nodeai.agents resume JOB_ID --state agents.db --rpc 31337=... --keystore wallet.json
    python -m nodeai.agents verify transcript.json --root 0x...

The wallet comes from an encrypted JSON keystore; its password from
``NODEAI_KEYSTORE_PASSWORD`` (never a plaintext key on the command line).
Exit codes: 0 job succeeded (or command done), 1 job failed, 2 bad input,
3 job waiting for an approval (``--no-wait``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nodeai.errors import NodeAIError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {what} must look like KEY=VALUE, got {value!r}")
        out[key] = rest
    return out


def _wallet(path: str | None) -> Any:
    if not path:
        return None
    from eth_account import Account

    password = os.environ.get("NODEAI_KEYSTORE_PASSWORD")
    if password is None:
        password = getpass.getpass(f"password for {path}: ")
    try:
        with open(path) as fh:
            return Account.from_key(Account.decrypt(json.load(fh), password))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot open keystore {path}: {exc} (check the file and NODEAI_KEYSTORE_PASSWORD)") from None


@contextlib.contextmanager
def _runtime(args: argparse.Namespace) -> Iterator[Any]:
    from nodeai.agents.model import OpenAIModelClient
    from nodeai.agents.runtime import AgentRuntime

    rpc = {int(k): v for k, v in _pairs(args.rpc, "--rpc").items()}
    model = None
    if args.model_url:
        model = OpenAIModelClient(args.model_url, api_key=args.model_key or "none", headers=_pairs(args.model_header, "--model-header"))
    with contextlib.ExitStack() as stack:
        artifacts = None
        if args.ipfs_repo:
            from nodeai.ipfs import EmbeddedKuboStore

            # NOTE: offline unless peers are named: the node then only serves what it holds
            node = EmbeddedKuboStore(Path(args.ipfs_repo), bootstrap=args.ipfs_peer) if args.ipfs_peer else \
                EmbeddedKuboStore(Path(args.ipfs_repo), offline=True)  # fmt: skip
            artifacts = stack.enter_context(node)
        runtime = AgentRuntime(args.state, artifacts=artifacts, model=model, wallet=_wallet(args.keystore), rpc_urls=rpc,
                               sql_url=args.sql_url, poll_interval_s=args.poll_s)  # fmt: skip
        stack.callback(runtime.close)
        yield runtime


def _report(result: Any, out: str | None) -> int:
    text = json.dumps(result.document(), indent=2)
    if out:
        Path(out).write_text(text)
    print(text)
    return {"succeeded": EXIT_OK, "failed": EXIT_FAILED}.get(result.status, EXIT_WAITING)


def cmd_create(args: argparse.Namespace) -> int:
    from nodeai.agents.spec import spec_template

    spec = spec_template(args.name, tools=[t for t in args.tools.split(",") if t], budget=args.budget, model=args.model,
                         chain_id=args.chain_id)  # fmt: skip
    print(json.dumps(json.loads(spec.to_json()), indent=2))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from nodeai.agents.spec import load_spec
    from nodeai.agents.transcript import sha256_hex

    spec = load_spec(Path(args.spec).read_bytes())
    print(f"{spec.name}: valid agent spec v{spec.spec_version}, sha256 {sha256_hex(spec.to_json())}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from nodeai.agents.spec import load_spec

    spec = load_spec(Path(args.spec).read_bytes())
    try:
        input_value: Any = json.loads(args.input) if args.json_input else args.input
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: --input is not JSON ({exc}); drop --json-input to pass text") from None
    deadline = time.time() + args.deadline_in if args.deadline_in else None
    with _runtime(args) as runtime:
        result = runtime.run(spec, input_value, job_id=args.job_id, deadline=deadline,
                             price_per_1k_tokens=args.price_per_1k, wait=not args.no_wait)  # fmt: skip
    return _report(result, args.result)


def cmd_resume(args: argparse.Namespace) -> int:
    with _runtime(args) as runtime:
        result = runtime.resume(args.job_id, wait=not args.no_wait)
    return _report(result, args.result)


def cmd_approvals(args: argparse.Namespace) -> int:
    from nodeai.agents.store import ApprovalBook, RuntimeStore

    book = ApprovalBook(RuntimeStore(args.state))
    if args.action == "list":
        found = book.list(None if args.status == "all" else args.status)
        print(json.dumps([a.as_json() for a in found], indent=2))
        return EXIT_OK
    if not args.id:
        raise SystemExit(f"error: approvals {args.action} needs an approval id (see `approvals list`)")
    decided = book.approve(args.id, args.by, args.note) if args.action == "approve" else book.deny(args.id, args.by, args.note)
    print(json.dumps(decided.as_json(), indent=2))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from nodeai.agents.transcript import verify_transcript

    root = verify_transcript(Path(args.transcript).read_bytes(), expected_root=args.root)
    print(f"transcript verifies: root {root}")
    return EXIT_OK


def _resources(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", required=True, help="SQLite file of the runtime (jobs, approvals, spend ledger)")
    parser.add_argument("--rpc", action="append", default=[], metavar="CHAIN=URL", help="JSON-RPC URL per chain id")
    parser.add_argument("--keystore", help="encrypted JSON keystore of the agent wallet (password: NODEAI_KEYSTORE_PASSWORD)")
    parser.add_argument("--ipfs-repo", help="repository folder of the embedded IPFS node (transcripts, ipfs tool)")
    parser.add_argument("--ipfs-peer", action="append", default=[], metavar="MULTIADDR",
                        help="peer to join (e.g. the publisher's node); without one the IPFS node stays offline")
    parser.add_argument("--sql-url", help="indexer database for the sql tool (SQLite path or postgresql://...)")
    parser.add_argument("--model-url", help="OpenAI-compatible base URL for llm agents, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model-key", help="API key for --model-url")
    parser.add_argument("--model-header", action="append", default=[], metavar="NAME=VALUE", help="extra header for --model-url")
    parser.add_argument("--poll-s", type=float, default=0.5, help="how often to check a pending approval")
    parser.add_argument("--no-wait", action="store_true", help="return (exit 3) instead of waiting for an approval")
    parser.add_argument("--result", help="also write the result document to this file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nodeai.agents", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("create", help="print a starting spec (llm planner, given tools and budget)")
    p.add_argument("name")
    p.add_argument("--tools", default="rpc,sql,ipfs", help="comma-separated: rpc (evm), sql, ipfs, http")
    p.add_argument("--budget", type=int, required=True, help="payment units the model may cost per job")
    p.add_argument("--model", help="model id as the serving gateway lists it")
    p.add_argument("--chain-id", type=int, default=31337)
    p.set_defaults(fn=cmd_create)

    p = sub.add_parser("validate", help="check a spec file")
    p.add_argument("spec")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("run", help="run a job of the agent in a spec file")
    p.add_argument("spec")
    p.add_argument("--input", required=True)
    p.add_argument("--json-input", action="store_true", help="parse --input as JSON")
    p.add_argument("--job-id", help="job id (an id already in --state is resumed)")
    p.add_argument("--deadline-in", type=float, help="seconds until the job's deadline")
    p.add_argument("--price-per-1k", type=int, default=0, help="payment units per 1,000 model tokens")
    _resources(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("resume", help="continue a job after a restart")
    p.add_argument("job_id")
    _resources(p)
    p.set_defaults(fn=cmd_resume)

    p = sub.add_parser("approvals", help="list, approve or deny pending approvals")
    p.add_argument("action", choices=["list", "approve", "deny"])
    p.add_argument("id", nargs="?")
    p.add_argument("--state", required=True)
    p.add_argument("--status", default="pending", choices=["pending", "approved", "denied", "expired", "all"])
    p.add_argument("--by", default=os.environ.get("USER", "operator"))
    p.add_argument("--note", default="")
    p.set_defaults(fn=cmd_approvals)

    p = sub.add_parser("verify", help="verify a transcript file (and its root)")
    p.add_argument("transcript")
    p.add_argument("--root", help="the root submitted on chain")
    p.set_defaults(fn=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except NodeAIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
