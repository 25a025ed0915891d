"""``nodeai receipts verify``: prove that a request was metered as billed.

The gateway signs a receipt for every request; providers commit batches of
receipts on chain as Merkle roots (``ReceiptRegistry``). Given a receipt
and its inclusion proof, this command recomputes the leaf and the path to
the root locally, then asks the contract whether that root was committed by
the receipt's own provider and whether the receipt is in it.

Input: a request hash (``0x`` + 64 hex digits, as ``nodeai infer`` prints it),
fetched from the provider's gateway (``--gateway-url``; ``--wait`` waits for
the provider to commit the batch), or a file (``-`` for stdin) holding what the
gateway's ``GET /v1/nodeai/receipts/{request_hash}`` answers::

    {"receipt": {"requestHash": "0x..", "provider": "0x..", "payer": "0x..", "modelId": 1, "tokensIn": 20,
                 "tokensOut": 40, "latencyMs": 120, "amount": "2000", "timestamp": 1700000000,
                 "chainId": 31337, "registry": "0x..", "signature": "0x.."},
     "root": "0x..", "proof": ["0x..", ...]}

snake_case keys are accepted too. When the receipt carries the provider's
EIP-712 signature, it is checked as well: a receipt is valid only when its
provider signed it and it is in a batch that provider committed.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from eth_utils import is_address, to_checksum_address

from nodeai.chain.receipts import Receipt, verify_proof
from nodeai.cli.context import CliContext, example, pass_ctx
from nodeai.cli.errors import CheckFailed, EXIT_FAILURE, ServiceUnavailable, UserError
from nodeai.cli.output import emit, parse_duration, status

FIELDS = ("request_hash", "provider", "payer", "model_id", "tokens_in", "tokens_out", "latency_ms", "amount", "timestamp")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _bytes32(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        text = value.removeprefix("0x")
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise UserError(f"{what} must be 32 bytes as 0x-hex (64 hex digits), got {value!r}")


def parse_receipt(data: dict[str, Any]) -> Receipt:
    raw = {_snake(k): v for k, v in data.items()}
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise UserError(f"the receipt lacks {', '.join(missing)}", "pass the receipt exactly as the gateway returned it")
    for name in ("provider", "payer"):
        if not isinstance(raw[name], str) or not is_address(raw[name]):
            raise UserError(f"receipt field {name} is not an address: {raw[name]!r}")
    numbers = {}
    for name in ("model_id", "tokens_in", "tokens_out", "latency_ms", "amount", "timestamp"):
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
            raise UserError(f"receipt field {name} must be a non-negative integer, got {value!r}")
        numbers[name] = int(value)
    return Receipt(request_hash=_bytes32(raw["request_hash"], "receipt field request_hash"),
                   provider=to_checksum_address(raw["provider"]), payer=to_checksum_address(raw["payer"]), **numbers)  # fmt: skip


@click.group("receipts")
@example("""
nodeai receipts verify receipt.json
""")
def receipts() -> None:
    """Per-request receipts: check that a request is in a batch committed on chain."""


_REQUEST_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


def _read_document(source: str) -> tuple[dict[str, Any], str]:
    """The receipt document in a file (``-``: stdin), and the name to call it by in messages."""
    name = "stdin" if source == "-" else source
    try:
        text = click.get_text_stream("stdin").read() if source == "-" else Path(source).expanduser().read_text()
    except OSError as exc:
        raise UserError(f"cannot read {source}: {exc.strerror}",
                        "pass a receipt file, `-` for stdin, or a request hash (0x + 64 hex digits)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} is not JSON: {exc}") from None
    return document, name


def _fetch_document(obj: CliContext, request_hash: str, gateway_url: str | None, wait_s: int) -> dict[str, Any]:
    """The receipt and its proof from the gateway; with ``wait_s``, polled until its batch is committed.

    The gateway's answer must be about ``request_hash``: a receipt for another request proves nothing here.
    """
    import httpx

    from nodeai.cli.infer import GATEWAY_HINT, gateway_get, gateway_root

    if not gateway_url:
        raise UserError("a request hash is looked up on the provider's gateway, and none is set", GATEWAY_HINT)
    root = gateway_root(gateway_url)
    url = f"{root}/v1/nodeai/receipts/{request_hash}"
    missing = UserError(f"the gateway at {root} has no receipt {request_hash}",
                        "check the hash, and that this is the gateway that served the request")
    deadline = time.monotonic() + wait_s
    announced = False
    with httpx.Client(timeout=30) as http:
        while True:
            document = gateway_get(http, url, f"receipt {request_hash}", not_found=missing)
            receipt = document.get("receipt") if isinstance(document, dict) else None
            answered = _snake_keys(receipt).get("request_hash") if isinstance(receipt, dict) else None
            if not isinstance(answered, str) or answered.lower() != request_hash.lower():
                raise CheckFailed(f"the gateway at {root} answered the request hash {request_hash} with a receipt for "
                                  f"{answered!r}: it is not the receipt asked for",
                                  "keep the output as evidence; the gateway does not serve this request's receipt")
            if document.get("committed") or time.monotonic() >= deadline:
                return document
            if not announced and not obj.json:
                status(f"  waiting for the provider to commit the batch of {request_hash} (up to {wait_s} s) ...")
                announced = True
            time.sleep(1)


def _snake_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {_snake(k): v for k, v in data.items()}


def _differences(kept: dict[str, Any], served: dict[str, Any]) -> list[str]:
    """The fields in which the gateway's copy of a receipt differs from the one `nodeai infer` kept."""
    mine, theirs = _snake_keys(kept), _snake_keys(served)
    changed = []
    for name in sorted(set(mine) | set(theirs)):
        a, b = mine.get(name), theirs.get(name)
        same = (str(a).lower() == str(b).lower()) if isinstance(a, str) or isinstance(b, str) else a == b
        if not same:
            changed.append(f"{name} (kept {a!r}, gateway {b!r})")
    return changed


@receipts.command("verify")
@click.argument("receipt_source", metavar="[RECEIPT]", required=False)
@click.option("--latest", is_flag=True, help="The receipt `nodeai infer` kept last (in $NODEAI_HOME/receipts), from its gateway.")
@click.option("--root", help="Merkle root to check against (default: the file's root).")
@click.option("--proof", "proof_items", multiple=True, help="A sibling hash of the proof, leaf first (repeat; default: the file's proof).")
@click.option("--gateway-url", envvar="NODEAI_GATEWAY_URL",
              help="Gateway to fetch a request hash's receipt and proof from; with --latest, the gateway that "
                   "served the request unless this option is given [env: NODEAI_GATEWAY_URL].")
@click.option("--wait", "wait_text", default="0s", show_default=True,
              help="With a request hash: wait this long for the provider to commit the receipt's batch (60s, 5m).")
@click.option("--save", "save_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the receipt with its proof to this file (evidence for a dispute).")
@pass_ctx
@example("""
nodeai receipts verify --latest --wait 60s               # the last `nodeai infer`
nodeai receipts verify 0x5c1d...e9a2 --gateway-url http://127.0.0.1:8000
nodeai receipts verify receipt.json
curl -s .../receipts/0xabc... | nodeai receipts verify - --json
""")
def verify(obj: CliContext, receipt_source: str | None, latest: bool, root: str | None, proof_items: tuple[str, ...],
           gateway_url: str | None, wait_text: str, save_path: Path | None) -> None:  # fmt: skip
    """Verify a receipt's Merkle inclusion against the root its provider committed on chain.

    RECEIPT is a request hash (looked up on the gateway), a file, or - for
    stdin; --latest takes the receipt of the last `nodeai infer`. Exit code 0 when the receipt is in a committed batch, 1 when it is
    not (altered receipt, wrong proof, or a batch not committed yet), 2 when
    the input cannot be read as a receipt.
    """
    if latest == (receipt_source is not None):
        raise UserError("give a RECEIPT (request hash, file or -) or --latest, not both or neither")
    if latest:
        from nodeai.cli.infer import latest_receipt

        kept = latest_receipt(obj)
        receipt_source = str(kept["receipt"]["requestHash"])
        # NOTE: the gateway that served it holds its proof, unless one is named on the command line
        # (NODEAI_GATEWAY_URL is a default for new requests, not a choice about this one).
        explicit = click.get_current_context().get_parameter_source("gateway_url") == ParameterSource.COMMANDLINE
        if not explicit:
            gateway_url = kept.get("gateway") or gateway_url
    assert receipt_source is not None
    if _REQUEST_HASH.match(receipt_source):
        wait_s = 0 if wait_text.strip() in ("0", "0s") else parse_duration(wait_text)
        document, name = _fetch_document(obj, receipt_source, gateway_url, wait_s), receipt_source
        if latest:
            changed = _differences(kept["receipt"], document["receipt"])
            if changed:
                raise CheckFailed(f"the gateway's copy of receipt {receipt_source} differs from the one `nodeai infer` "
                                  f"kept: {'; '.join(changed)}",
                                  "the kept copy is what the provider signed for your request: keep both as evidence")
        if document.get("root") is None and root is None:
            raise CheckFailed(f"the provider has not committed the batch of {receipt_source} yet",
                              f"providers commit receipts in batches: retry with --wait 60s, or later")
    else:
        document, name = _read_document(receipt_source)
    if not isinstance(document, dict) or not isinstance(document.get("receipt"), dict):
        raise UserError(f"{name} has no \"receipt\" object", "see `nodeai receipts verify --help` for the format")
    if save_path is not None:
        save_path.write_text(json.dumps(document, indent=2) + "\n")
    receipt = parse_receipt(document["receipt"])
    root_value = root or document.get("root")
    if root_value is None:
        raise UserError("no Merkle root given", "pass --root 0x... or put \"root\" in the file")
    root_bytes = _bytes32(root_value, "root")
    proof_source = list(proof_items) if proof_items else document.get("proof", [])
    if not isinstance(proof_source, list):
        raise UserError("\"proof\" must be a list of 0x-hex hashes")
    proof = [_bytes32(p, f"proof item {i}") for i, p in enumerate(proof_source)]

    signature_valid = _check_signature(obj, document["receipt"])
    leaf = receipt.leaf()
    locally = verify_proof(proof, root_bytes, leaf)
    registry = obj.contract("ReceiptRegistry")
    committed = registry.functions.isCommitted(receipt.provider, root_bytes).call()
    on_chain = registry.functions.verifyReceipt(root_bytes, receipt.as_tuple(), proof).call()
    data = {"valid": bool(on_chain) and signature_valid is not False, "signature_valid": signature_valid, "leaf": "0x" + leaf.hex(), "root": "0x" + root_bytes.hex(),
            "proof_matches_root": locally, "root_committed": committed, "provider": receipt.provider,
            "payer": receipt.payer, "model_id": receipt.model_id, "amount": receipt.amount,
            "tokens_in": receipt.tokens_in, "tokens_out": receipt.tokens_out}  # fmt: skip
    if data["valid"]:
        emit(obj.json, data, f"valid: the receipt ({obj.fmt(receipt.amount)} for {receipt.tokens_in}+{receipt.tokens_out} tokens, "
             f"model {receipt.model_id}) is in the batch {data['root']} committed on chain by {receipt.provider}")  # fmt: skip
        return
    if signature_valid is False:
        message = f"the receipt is not signed by its provider {receipt.provider}: it was altered or forged"
        hint = "use the receipt exactly as the gateway returned it"
    elif not committed:
        message = f"root {data['root']} was not committed on chain by the receipt's provider {receipt.provider}"
        hint = "providers commit receipts in batches: retry later, or check the root you were given"
    else:
        message = "the receipt is NOT in the committed batch: the receipt or its proof was altered"
        hint = "compare it with the copy the gateway returned; dispute the charge if the provider billed something else"
    data["reason"] = message
    if obj.json:
        emit(True, data, "")
        raise click.exceptions.Exit(EXIT_FAILURE)
    raise CheckFailed(message, hint)


def _check_signature(obj: CliContext, raw: dict[str, Any]) -> bool | None:
    """The provider's EIP-712 signature checked (None when the receipt carries none)."""
    if "signature" not in raw:
        return None
    from nodeai.serving.receipts import receipt_from_json, verify_receipt_signature

    camel = {_camel(k): v for k, v in raw.items()}
    try:
        signed = receipt_from_json(camel)
    except ValueError as exc:
        raise UserError(f"the receipt cannot be read: {exc}", "pass the receipt exactly as the gateway returned it") from None
    registry = obj.contract("ReceiptRegistry").address
    if signed.chain_id != obj.deployment.chain_id or signed.registry.lower() != registry.lower():
        raise UserError(f"the receipt was signed for chain {signed.chain_id} and registry {signed.registry}, "
                        f"this network is chain {obj.deployment.chain_id} with registry {registry}",
                        "verify it against its own network (--rpc-url, --deployments)")  # fmt: skip
    return verify_receipt_signature(signed)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
