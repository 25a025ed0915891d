"""``nodeai infer``: one chat completion from a provider's gateway, paid by a signed voucher, receipt checked.

The gateway is found from ``--gateway-url`` or from the provider's endpoint on
chain (``--provider``). The request carries an InferenceEscrow voucher signed by
the wallet (``nodeai.serving.client.VoucherWallet`` through ``HttpxVoucherAuth``)
for the running total plus ``--max-cost``, the most this one request may add to
it. The running total is this wallet's own record, kept per channel and model
in $NODEAI_HOME/receipts/totals.json (the gateway is asked for it only the first
time, when nothing is kept); a 402 claiming more than the wallet ever signed for
is refused. The answer comes with the provider's signed receipt, which is checked
here: signed by that provider, about this very request (its hash), for this
wallet and model, and priced at the provider's on-chain price for the tokens
used; the total the gateway reports must be the kept total plus the receipt's
amount. Only then does the wallet keep the new total and sign a voucher for
exactly it, so the provider redeems what it charged and not the headroom.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from eth_utils import is_address, to_checksum_address

from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import EXIT_FAILURE, CheckFailed, CliError, ServiceUnavailable, UserError
from nodeai.cli.output import check_amount, emit, parse_amount, short, status

GATEWAY_HINT = ("pass --gateway-url URL (NODEAI_GATEWAY_URL) or --provider ADDRESS (NODEAI_PROVIDER; its endpoint "
                "is read from the chain); `nodeai dev up` writes both into its env.sh")


def gateway_root(url: str) -> str:
    """``http://host:port`` from what users paste: with or without a trailing ``/`` or ``/v1``."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


def gateway_get(http: Any, url: str, what: str, not_found: CliError | None = None) -> Any:
    """GET a gateway URL: the JSON body, or an error that says which gateway did not answer
    (``not_found``, when given, for a 404)."""
    import httpx

    try:
        reply = http.get(url)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the gateway did not answer {url} ({type(exc).__name__})",
                                 "check that the provider runs, or " + GATEWAY_HINT) from None
    if reply.status_code == 404 and not_found is not None:
        raise not_found
    if reply.status_code >= 400:
        raise ServiceUnavailable(f"the gateway answered {reply.status_code} for {what}: {_message(reply)}")
    try:
        return reply.json()
    except ValueError:
        raise ServiceUnavailable(f"the gateway answered {what} with something that is not JSON: {reply.text[:200]!r}",
                                 "is it a NodeAI gateway? " + GATEWAY_HINT) from None


def _message(reply: Any) -> str:
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return reply.text[:300]


def _find_gateway(obj: CliContext, gateway_url: str | None, provider: str | None, http: Any) -> tuple[str, str]:
    """(gateway root URL, provider address), each checked against the other and the chain."""
    registry = obj.contract("ProviderRegistry")
    if provider is not None:
        if not is_address(provider):
            raise UserError(f"--provider {provider!r} is not an address", "give the provider's 0x address")
        provider = to_checksum_address(provider)
        if not registry.functions.isRegistered(provider).call():
            raise UserError(f"{provider} is not a registered provider", "pick one from the indexer's /providers list")
    if gateway_url is None:
        if provider is None:
            raise UserError("no gateway to ask", GATEWAY_HINT)
        gateway_url = registry.functions.endpoint(provider).call()
        if not gateway_url:
            raise UserError(f"the provider {provider} advertises no endpoint on chain", "pass --gateway-url")
    root = gateway_root(gateway_url)
    served_by = gateway_get(http, f"{root}/health", "/health").get("provider")
    if not isinstance(served_by, str) or not is_address(served_by):
        raise ServiceUnavailable(f"{root}/health names no provider address: is {root} a NodeAI gateway?")
    served_by = to_checksum_address(served_by)
    if provider is not None and served_by != provider:
        raise UserError(f"the gateway {root} signs as {served_by}, not as the provider {provider}",
                        "check --gateway-url and --provider: a voucher for one provider is useless to another")
    if provider is None and not registry.functions.isRegistered(served_by).call():
        raise UserError(f"the gateway {root} signs as {served_by}, which is not a registered provider on this chain",
                        "check --gateway-url and --rpc-url")
    return root, served_by


def _find_model(models: list[dict[str, Any]], wanted: str, root: str) -> tuple[str, int]:
    """(name the gateway serves it as, on-chain id) of ``wanted`` (a name or an on-chain id)."""
    for entry in models:
        model_id = (entry.get("nodeai") or {}).get("model_id")
        if entry.get("id") == wanted or (wanted.isdigit() and model_id == int(wanted)):
            if not isinstance(model_id, int):
                raise ServiceUnavailable(f"the gateway {root} lists {entry.get('id')} without its on-chain model id")
            return str(entry["id"]), model_id
    names = ", ".join(f"{e.get('id')} (#{(e.get('nodeai') or {}).get('model_id')})" for e in models) or "none"
    raise UserError(f"the gateway {root} does not serve {wanted!r}; it serves {names}", "pass one of those to --model")


def _post_paid(obj: CliContext, http: Any, url: str, body: dict[str, Any], wallet: Any, model_id: int,
               cap: int, known: int) -> Any:
    """POST paid by ``HttpxVoucherAuth``: a voucher for ``known`` (the running total) + ``cap``, and one retry
    with what a 402 asks when that is at most ``cap`` above a total this wallet signed for."""
    import httpx

    from nodeai.serving.client import HttpxVoucherAuth

    try:
        reply = http.post(url, json=body, auth=HttpxVoucherAuth(wallet))
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the gateway did not answer {url} ({type(exc).__name__}: {exc})",
                                 "check that the provider runs; nothing was charged without an answer") from None
    if reply.status_code == 402:
        error = _error(reply)
        details = error.get("nodeai") or {}
        charged, required = str(details.get("charged_total", "")), str(details.get("required_cumulative", ""))
        if error.get("code") == "voucher_too_low" and charged.isdigit() and required.isdigit():
            if int(charged) > known:
                raise CheckFailed(f"the gateway claims this wallet's running total with it is {obj.fmt(int(charged))}, "
                                  f"more than this wallet ever signed for ({obj.fmt(known)}, "
                                  f"kept in {totals_file(obj)}): refused, nothing paid",
                                  "do not pay this provider again until it explains; keep the output as evidence")
            if int(required) - int(charged) > cap:
                raise UserError(f"the provider may charge up to {obj.fmt(int(required) - int(charged))} for this "
                                f"request, more than --max-cost {obj.fmt(cap)}",
                                "raise --max-cost, or lower --max-tokens / shorten the prompt")
        raise UserError(f"the gateway refused the payment: {_message(reply)}",
                        "deposit for this provider with `nodeai escrow deposit AMOUNT --provider ADDRESS`")
    if 400 <= reply.status_code < 500:
        raise UserError(f"the gateway refused the request ({reply.status_code}): {_message(reply)}")
    if reply.status_code >= 500:
        raise ServiceUnavailable(f"the gateway failed ({reply.status_code}): {_message(reply)}", "retry later")
    return reply


def _error(reply: Any) -> dict[str, Any]:
    try:
        error = reply.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


# -- the running totals ---------------------------------------------------------------------------
def totals_file(obj: CliContext) -> Path:
    """What this wallet has been charged so far per channel and model, next to the kept receipts."""
    return receipts_dir(obj) / "totals.json"


def _channel_key(obj: CliContext, escrow: str, provider: str, model_id: int) -> str:
    # NOTE: the chain's genesis hash is part of the key: a fresh local chain (`nodeai dev up` again) reuses
    # chain id, contract and provider addresses, but its channels start at 0.
    genesis = obj.w3.eth.get_block(0)["hash"]
    genesis_hex = "0x" + bytes(genesis).hex().removeprefix("0x")
    return f"{obj.deployment.chain_id}:{genesis_hex}:{escrow}:{provider}:{obj.address}:{model_id}"


def _read_totals(obj: CliContext) -> dict[str, Any]:
    path = totals_file(obj)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the running totals in {path}: {exc}",
                        "restore it from a backup; deleting it makes the next request take the gateway's "
                        "word for the total once") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold running totals", "restore it from a backup")
    return data


def known_total(obj: CliContext, key: str) -> int | None:
    """The running total this wallet settled with the channel last (None: never, from this $NODEAI_HOME)."""
    entry = _read_totals(obj).get(key)
    total = entry.get("total") if isinstance(entry, dict) else None
    return int(total) if isinstance(total, str) and total.isdigit() else None


def keep_total(obj: CliContext, key: str, total: int) -> None:
    """Record the new running total: written to a temporary file and renamed, so a crash leaves the old or the new."""
    path = totals_file(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_totals(obj)
    data[key] = {"total": str(total), "saved_at": time.time()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@contextmanager
def _channel_lock(obj: CliContext) -> Iterator[None]:
    """One paid request at a time per $NODEAI_HOME: the running total is read before and written after it."""
    import fcntl

    folder = receipts_dir(obj)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".totals.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ask_total(obj: CliContext, http: Any, root: str, wallet: Any, model_id: int) -> int:
    """The running total the gateway holds for this channel, asked with a voucher for 0 (which pays nothing)."""
    import httpx

    from nodeai.serving.payments import VOUCHER_HEADER

    url = f"{root}/v1/nodeai/vouchers"
    try:
        reply = http.post(url, headers={VOUCHER_HEADER: wallet.sign(model_id, 0)})
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the gateway did not answer {url} ({type(exc).__name__})", GATEWAY_HINT) from None
    try:
        body = reply.json()
        total = str(body["charged_total"] if reply.status_code == 200 else body["error"]["nodeai"]["charged_total"])
    except (ValueError, KeyError, TypeError):
        total = ""
    if not total.isdigit():
        raise ServiceUnavailable(f"the gateway did not say this wallet's running total ({reply.status_code} from {url}: "
                                 f"{_message(reply)})", "is it a NodeAI gateway that takes vouchers?")
    return int(total)


def _settle(http: Any, root: str, wallet: Any, model_id: int, total: int) -> int:
    """Hand in a voucher for exactly ``total``; the channel's charged total the gateway answers."""
    from nodeai.serving.payments import VOUCHER_HEADER

    reply = http.post(f"{root}/v1/nodeai/vouchers", headers={VOUCHER_HEADER: wallet.sign(model_id, total)})
    if reply.status_code != 200:
        raise RuntimeError(f"it answered {reply.status_code}: {_message(reply)}")
    return int(reply.json()["charged_total"])


def receipts_dir(obj: CliContext) -> Path:
    return obj.home / "receipts"


def keep_receipt(obj: CliContext, data: dict[str, Any]) -> Path:
    """The receipt, kept in $NODEAI_HOME/receipts/ as the wallet's evidence (and for `receipts verify --latest`)."""
    folder = receipts_dir(obj)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['request_hash']}.json"
    record = {"receipt": data["receipt"], "gateway": data["gateway"], "model": data["model"], "answer": data["answer"],
              "response_id": data["response_id"], "saved_at": time.time()}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def latest_receipt(obj: CliContext) -> dict[str, Any]:
    """The receipt `nodeai infer` kept last."""
    records = []
    for path in receipts_dir(obj).glob("0x*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not records:
        raise UserError(f"no receipt kept in {receipts_dir(obj)} yet", "make a request with `nodeai infer` first")
    return max(records, key=lambda r: float(r.get("saved_at") or 0))


@click.command("infer")
@click.argument("prompt")
@click.option("--model", envvar="NODEAI_MODEL", required=True,
              help="The model, as the gateway lists it (name) or by its on-chain id [env: NODEAI_MODEL].")
@click.option("--gateway-url", envvar="NODEAI_GATEWAY_URL", help="The provider's gateway [env: NODEAI_GATEWAY_URL].")
@click.option("--provider", envvar="NODEAI_PROVIDER",
              help="The provider's address; its gateway is read from the chain unless --gateway-url is given "
                   "[env: NODEAI_PROVIDER].")
@click.option("--system", help="A system prompt.")
@click.option("--max-tokens", type=click.IntRange(1, 8_192), default=64, show_default=True, help="Most tokens to generate.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
              help="Sampling temperature (0: the same answer every time).")
@click.option("--max-cost", default="1", show_default=True,
              help="The most this one request may add to what you owe the provider, in token units: the voucher "
                   "sent with it covers the running total plus this, and a provider asking more is refused.")
@signer_options
@pass_ctx
@example("""
nodeai infer --model smollm2-135m-instruct "What is the capital of France?"
nodeai infer --model 1 --provider 0x9965...A4dc "Name a prime number." --max-tokens 16 --json
""")
def infer(obj: CliContext, prompt: str, model: str, gateway_url: str | None, provider: str | None, system: str | None,
          max_tokens: int, temperature: float, max_cost: str) -> None:  # fmt: skip
    """Ask a model one question, pay for it with a signed voucher, check the provider's receipt.

    Needs a deposit for the provider (`nodeai escrow deposit`). Prints the
    answer, what it cost and the receipt, which is kept in
    $NODEAI_HOME/receipts/ and can be proven on chain with
    `nodeai receipts verify --latest` once the provider commits its batch.
    """
    import httpx

    from nodeai.serving.client import CHARGED_TOTAL_HEADER, VoucherWallet, receipt_from_usage, verify_receipt
    from nodeai.serving.payments import price_for_tokens

    check_amount(max_cost, "--max-cost")
    with httpx.Client(timeout=httpx.Timeout(300, connect=10)) as http, _channel_lock(obj):
        root, provider = _find_gateway(obj, gateway_url, provider, http)
        name, model_id = _find_model(gateway_get(http, f"{root}/v1/models", "/v1/models").get("data") or [], model, root)
        price = obj.contract("ProviderRegistry").functions.modelPrice(provider, model_id).call()
        if price == 0:
            raise UserError(f"the provider {provider} sets no price for model #{model_id} on chain, so it cannot be paid",
                            "pick a model the provider serves (`nodeai models list`)")
        escrow = obj.contract("InferenceEscrow")
        payer = obj.address
        balance = escrow.functions.channels(payer, provider).call()[0]
        if balance == 0:
            raise UserError(f"this wallet ({payer}) has no deposit for the provider {provider}",
                            f"deposit first: `nodeai escrow deposit 5 --provider {provider}`")
        cap = parse_amount(max_cost, obj.decimals, False, "--max-cost")
        account = obj.account()
        key = _channel_key(obj, escrow.address, provider, model_id)
        wallet = VoucherWallet(account.key, provider, obj.deployment.chain_id, escrow.address, {name: model_id},
                               headroom=cap)  # fmt: skip
        known = known_total(obj, key)
        if known is None:
            # NOTE: no total kept for this channel (a new $NODEAI_HOME, or another program paid on it): the
            # gateway's word is the only record, so it is asked once, before the request, and kept from then on.
            known = _ask_total(obj, http, root, wallet, model_id)
            status(f"  no running total with this provider kept in {totals_file(obj)}: the gateway says "
                   f"{obj.fmt(known)} so far")
        # NOTE: knowing its total, the wallet refuses a 402 claiming more than it ever signed for.
        wallet = VoucherWallet(account.key, provider, obj.deployment.chain_id, escrow.address, {name: model_id},
                               headroom=cap, totals={model_id: known})  # fmt: skip
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body = {"model": name, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        status(f"  asking {name} (#{model_id}) at {root}, paid by voucher (at most {obj.fmt(cap)} for this request) ...")
        started = time.monotonic()
        reply = _post_paid(obj, http, f"{root}/v1/chat/completions", body, wallet, model_id, cap, known)
        seconds = time.monotonic() - started
        answer = reply.json()
        usage = answer.get("usage") or {}
        try:
            signed = receipt_from_usage(usage)
        except ValueError as exc:
            raise CheckFailed(f"the answer carries no receipt: {exc}", "this provider does not meter as NodeAI gateways do")
        total_text = reply.headers.get(CHARGED_TOTAL_HEADER) or usage.get("nodeai_charged_total")
        charged_total = int(total_text) if str(total_text or "").isdigit() else None
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        receipt = signed.receipt
        before = known
        expected_total = before + receipt.amount
        problems = []
        if not verify_receipt(signed, provider, body, str(answer.get("id", ""))):
            problems.append(f"it is not signed by {provider} for this request")
        if receipt.payer != account.address or receipt.model_id != model_id:
            problems.append(f"it names payer {receipt.payer} and model #{receipt.model_id}")
        if receipt.amount != price_for_tokens(tokens, price):
            problems.append(f"it charges {obj.fmt(receipt.amount)} for {tokens} tokens; the on-chain price makes that "
                            f"{obj.fmt(price_for_tokens(tokens, price))}")
        if receipt.amount > cap:
            problems.append(f"it charges {obj.fmt(receipt.amount)}, more than --max-cost {obj.fmt(cap)}")
        if signed.chain_id != obj.deployment.chain_id or signed.registry.lower() != obj.contract("ReceiptRegistry").address.lower():
            problems.append(f"it is signed for chain {signed.chain_id} and registry {signed.registry}")
        if charged_total != expected_total:
            # NOTE: the gateway's running total is checked, not believed: settling on an inflated one would pay
            # for requests never served.
            reported = "no running total" if charged_total is None else f"a running total of {obj.fmt(charged_total)}"
            problems.append(f"the gateway reports {reported}; it was {obj.fmt(before)} before this request, which "
                            f"makes {obj.fmt(expected_total)} with this receipt (unless another program paid this "
                            f"provider from this wallet since: then the total kept in {totals_file(obj)} is behind)")
        settled = None
        if not problems:
            keep_total(obj, key, expected_total)
            try:
                # NOTE: a voucher for exactly the total this wallet computed, so the provider can redeem what it
                # charged and no more (the one sent with the request covered up to --max-cost on top of it).
                settled = _settle(http, root, wallet, model_id, expected_total)
            except (RuntimeError, httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
                status(f"  warning: the gateway did not take the settlement voucher ({exc}); it can still redeem "
                       "the one sent with the request")
            if settled is not None and settled != expected_total:
                status(f"  warning: the gateway answered the settlement voucher with a total of {obj.fmt(settled)}, "
                       f"not {obj.fmt(expected_total)}")

    content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
    request_hash = "0x" + receipt.request_hash.hex()
    data = {
        "answer": content, "model": name, "model_id": model_id, "provider": provider, "gateway": root,
        "usage": {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")},
        "price_per_1k_tokens": price, "charged": receipt.amount, "charged_total": charged_total,
        "expected_total": expected_total, "settled_total": settled if not problems else None,
        "escrow_balance": balance, "request_hash": request_hash,
        "receipt": signed.to_json(), "receipt_verified": not problems, "problems": problems,
        "seconds": round(seconds, 2), "response_id": answer.get("id"),
    }  # fmt: skip

    if not problems:
        data["saved_as"] = str(keep_receipt(obj, data))

    def human() -> str:
        lines = [content.strip(), "",
                 f"paid      {obj.fmt(receipt.amount)} for {receipt.tokens_in}+{receipt.tokens_out} tokens at "
                 f"{obj.fmt(price)} per 1k ({name} #{model_id}, provider {short(provider)}, {seconds:.1f} s)"]
        if not problems:
            lines.append(f"total     {obj.fmt(expected_total)} charged by this provider for this model so far; "
                         f"{obj.fmt(balance)} was left in escrow for it before this request")
        lines.append(f"receipt   {request_hash}: " + ("signed by the provider, for this request, at its on-chain price: verified"
                                                       if not problems else "NOT VALID: " + "; ".join(problems)))
        if not problems:
            lines.append(f"next: prove it on chain once the provider commits its receipts: "
                         f"`nodeai receipts verify --latest --wait 60s` (kept in {data['saved_as']})")
        return "\n".join(lines)

    emit(obj.json, data, human)
    if problems and obj.json:
        raise click.exceptions.Exit(EXIT_FAILURE)  # NOTE: one JSON document: the answer, with its problems
    if problems:
        raise CheckFailed("the receipt does not hold: " + "; ".join(problems),
                          "keep the output as evidence; do not pay this provider again until it explains")
