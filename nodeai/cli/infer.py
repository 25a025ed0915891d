"""``nodeai infer``: one chat completion from a provider's gateway, paid by a signed voucher, receipt checked.

The gateway is found from ``--gateway-url`` or from the provider's endpoint on
chain (``--provider``). The request carries an InferenceEscrow voucher signed by
the wallet (``nodeai.serving.client.VoucherWallet``) for the running total the
gateway reports plus ``--max-cost``, the most this one request may cost. The
answer comes with the provider's signed receipt, which is checked here: signed
by that provider, about this very request (its hash), for this wallet and model,
and priced at the provider's on-chain price for the tokens used. Afterwards
the wallet signs a voucher for exactly the new running total, so the provider
redeems what it charged and not the headroom.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from eth_utils import is_address, to_checksum_address

from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import EXIT_FAILURE, CheckFailed, ServiceUnavailable, UserError
from nodeai.cli.output import check_amount, emit, parse_amount, short, status

GATEWAY_HINT = ("pass --gateway-url URL (NODEAI_GATEWAY_URL) or --provider ADDRESS (NODEAI_PROVIDER; its endpoint "
                "is read from the chain); `nodeai dev up` writes both into its env.sh")


def gateway_root(url: str) -> str:
    """``http://host:port`` from what users paste: with or without a trailing ``/`` or ``/v1``."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


def gateway_get(http: Any, url: str, what: str) -> Any:
    """GET a gateway URL: the JSON body, or an error that says which gateway did not answer."""
    import httpx

    try:
        reply = http.get(url)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"the gateway did not answer {url} ({type(exc).__name__})",
                                 "check that the provider runs, or " + GATEWAY_HINT) from None
    if reply.status_code >= 400:
        raise ServiceUnavailable(f"the gateway answered {reply.status_code} for {what}: {_message(reply)}")
    return reply.json()


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


def _post_paid(obj: CliContext, http: Any, url: str, body: dict[str, Any], wallet: Any, model_id: int, cap: int) -> Any:
    """POST with a voucher for the running total + ``cap``; once more with what the gateway asks, within ``cap``."""
    import httpx

    from nodeai.serving.payments import VOUCHER_HEADER

    header = wallet.begin(model_id)
    try:
        try:
            reply = http.post(url, json=body, headers={VOUCHER_HEADER: header})
            if reply.status_code == 402:
                error = (reply.json() or {}).get("error") or {}
                if error.get("code") == "voucher_too_low":
                    # NOTE: this wallet's running total with the provider lives in the gateway (a new process
                    # starts at 0): it answers the total with the amount to sign. The total is the gateway's word;
                    # --max-cost bounds what this request may add to it, the deposit bounds the rest.
                    charged, required = int(error["nodeai"]["charged_total"]), int(error["nodeai"]["required_cumulative"])
                    if required - charged > cap:
                        raise UserError(f"the provider may charge up to {obj.fmt(required - charged)} for this request, "
                                        f"more than --max-cost {obj.fmt(cap)}",
                                        "raise --max-cost, or lower --max-tokens / shorten the prompt")  # fmt: skip
                    wallet.observe(model_id, charged)
                    reply = http.post(url, json=body, headers={VOUCHER_HEADER: wallet.sign(model_id, required)})
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"the gateway did not answer {url} ({type(exc).__name__}: {exc})",
                                     "check that the provider runs; nothing was charged without an answer") from None
    finally:
        wallet.end(model_id)
    if reply.status_code == 402:
        raise UserError(f"the gateway refused the payment: {_message(reply)}",
                        "deposit for this provider with `nodeai escrow deposit AMOUNT --provider ADDRESS`")
    if 400 <= reply.status_code < 500:
        raise UserError(f"the gateway refused the request ({reply.status_code}): {_message(reply)}")
    if reply.status_code >= 500:
        raise ServiceUnavailable(f"the gateway failed ({reply.status_code}): {_message(reply)}", "retry later")
    return reply


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
              help="Most this request may cost, in token units: the voucher's headroom over the running total.")
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
    with httpx.Client(timeout=httpx.Timeout(300, connect=10)) as http:
        root, provider = _find_gateway(obj, gateway_url, provider, http)
        name, model_id = _find_model(gateway_get(http, f"{root}/v1/models", "/v1/models").get("data") or [], model, root)
        price = obj.contract("ProviderRegistry").functions.modelPrice(provider, model_id).call()
        if price == 0:
            raise UserError(f"the provider {provider} sets no price for model #{model_id} on chain, so it cannot be paid",
                            "pick a model the provider serves (`nodeai models list`)")
        escrow = obj.contract("InferenceEscrow")
        payer = obj.address
        deposit = escrow.functions.channels(payer, provider).call()[0]
        if deposit == 0:
            raise UserError(f"this wallet ({payer}) has no deposit for the provider {provider}",
                            f"deposit first: `nodeai escrow deposit 5 --provider {provider}`")
        cap = parse_amount(max_cost, obj.decimals, False, "--max-cost")
        account = obj.account()
        wallet = VoucherWallet(account.key, provider, obj.deployment.chain_id, escrow.address, {name: model_id}, headroom=cap)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        body = {"model": name, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        status(f"  asking {name} (#{model_id}) at {root}, paid by voucher (at most {obj.fmt(cap)}) ...")
        started = time.monotonic()
        reply = _post_paid(obj, http, f"{root}/v1/chat/completions", body, wallet, model_id, cap)
        seconds = time.monotonic() - started
        answer = reply.json()
        usage = answer.get("usage") or {}
        try:
            signed = receipt_from_usage(usage)
        except ValueError as exc:
            raise CheckFailed(f"the answer carries no receipt: {exc}", "this provider does not meter as NodeAI gateways do")
        total_text = reply.headers.get(CHARGED_TOTAL_HEADER) or usage.get("nodeai_charged_total")
        charged_total = int(total_text) if str(total_text or "").isdigit() else None
        if charged_total is not None:
            wallet.observe(model_id, charged_total)
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        receipt = signed.receipt
        problems = []
        if not verify_receipt(signed, provider, body, str(answer.get("id", ""))):
            problems.append(f"it is not signed by {provider} for this request")
        if receipt.payer != account.address or receipt.model_id != model_id:
            problems.append(f"it names payer {receipt.payer} and model #{receipt.model_id}")
        if receipt.amount != price_for_tokens(tokens, price):
            problems.append(f"it charges {obj.fmt(receipt.amount)} for {tokens} tokens; the on-chain price makes that "
                            f"{obj.fmt(price_for_tokens(tokens, price))}")
        if signed.chain_id != obj.deployment.chain_id or signed.registry.lower() != obj.contract("ReceiptRegistry").address.lower():
            problems.append(f"it is signed for chain {signed.chain_id} and registry {signed.registry}")
        settled = None
        if not problems:
            try:
                # NOTE: a voucher for exactly the running total, so the provider can redeem what it charged
                # and no more (the one sent with the request covered up to --max-cost on top of it).
                settled = wallet.settle(root, name, client=http)
            except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
                status(f"  warning: the gateway did not take the settlement voucher ({exc}); it can still redeem "
                       "the one sent with the request")

    content = ((answer.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
    request_hash = "0x" + receipt.request_hash.hex()
    data = {
        "answer": content, "model": name, "model_id": model_id, "provider": provider, "gateway": root,
        "usage": {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens")},
        "price_per_1k_tokens": price, "charged": receipt.amount, "charged_total": charged_total,
        "settled_total": int(settled["charged_total"]) if settled else None, "request_hash": request_hash,
        "receipt": signed.to_json(), "receipt_verified": not problems, "problems": problems,
        "seconds": round(seconds, 2), "response_id": answer.get("id"),
    }  # fmt: skip

    if not problems:
        data["saved_as"] = str(keep_receipt(obj, data))

    def human() -> str:
        lines = [content.strip(), "",
                 f"paid      {obj.fmt(receipt.amount)} for {receipt.tokens_in}+{receipt.tokens_out} tokens at "
                 f"{obj.fmt(price)} per 1k ({name} #{model_id}, provider {short(provider)}, {seconds:.1f} s)"]
        if charged_total is not None:
            lines.append(f"total     {obj.fmt(charged_total)} charged by this provider for this model so far "
                         f"(of your {obj.fmt(deposit)} deposit)")
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
