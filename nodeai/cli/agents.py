"""``nodeai agents create|run|list``: agents as specs on IPFS, registered on chain, run as escrowed jobs.

``create`` builds the spec (``nodeai.agents.spec``: tools, budget, base model,
system prompt; or a full spec file), pins its canonical JSON to IPFS and
registers it with ``ModelRegistry.registerAgent``. The name is remembered in
``$NODEAI_HOME/agents.json`` (per chain) so ``run`` can take it.

``run`` pins the job input ``{"kind": "agent", ...}``, locks the payment in
the JobMarket (``createJob``) and follows the job live on chain: claimed,
submitted (it then fetches the output from IPFS, verified against its CID,
and prints the result and the transcript CID), and, after the challenge
window, settled (it sends ``finalize`` itself when nobody else has, then
prints the settlement receipt: who got what).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from nodeai.chain.jobs import ZERO_ADDRESS, JobState
from nodeai.cli.chainview import JobView, follow, load_job
from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import CliError, MissingComponent, UserError
from nodeai.cli.output import check_amount, duration, emit, parse_amount, parse_duration, short, status, table, when
from nodeai.errors import ContractReverted

AGENT_INPUT_KIND = "agent"


@click.group("agents")
@example("""
nodeai agents create treasury-bot --tools=rpc,sql,ipfs --budget=50 --model 1
nodeai agents run treasury-bot --input "Rebalance to 60/40"
""")
def agents() -> None:
    """Agents: publish a spec, run it as an escrowed job, list them."""


# -- the local name book ------------------------------------------------------------------------
def _book_path(obj: CliContext) -> Path:
    return obj.home / "agents.json"


def _book(obj: CliContext) -> dict[str, Any]:
    path = _book_path(obj)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON", "fix or delete it (agents can still be run by id)") from None


def _remember(obj: CliContext, name: str, entry: dict[str, Any]) -> None:
    book = _book(obj)
    book.setdefault(str(obj.deployment.chain_id), {})[name] = entry
    path = _book_path(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book, indent=2, sort_keys=True))
    tmp.replace(path)


def resolve_agent(obj: CliContext, name: str) -> tuple[int, dict[str, Any]]:
    """(agent id, what is known locally) for a name created here, or a numeric id."""
    entry = _book(obj).get(str(obj.deployment.chain_id), {}).get(name)
    if entry is not None:
        return int(entry["agent_id"]), entry
    if name.isdigit():
        return int(name), {}
    raise UserError(f"no agent named {name!r} was created from this machine on chain {obj.deployment.chain_id}",
                    "create it with `nodeai agents create NAME ...`, or pass its numeric id (see `nodeai agents list`)")


# -- create -------------------------------------------------------------------------------------
def build_spec(obj: CliContext, name: str, tools: str, budget_units: int | None, model_id: int, gateway_model: str | None,
               system: str | None, max_steps: int | None, spec_file: Path | None) -> Any:  # fmt: skip
    try:
        from nodeai.agents.errors import SpecError
        from nodeai.agents.spec import load_spec, spec_template
    except ImportError:
        raise MissingComponent("nodeai.agents", "creating an agent") from None
    try:
        if spec_file is not None:
            base = json.loads(spec_file.read_text())
            if not isinstance(base, dict):
                raise UserError(f"{spec_file} is not a JSON object")
            base["name"] = name
        else:
            tool_list = [t for t in (x.strip() for x in tools.split(",")) if t]
            base = spec_template(name, tools=tool_list, budget=budget_units, model=gateway_model,
                                 chain_id=obj.deployment.chain_id, system_prompt=system or "").model_dump(mode="json")  # fmt: skip
        base["base_model_id"] = model_id
        if gateway_model:
            base["model"] = gateway_model
        if system:
            base["system_prompt"] = system
        if max_steps:
            base["max_steps"] = max_steps
        if budget_units is not None:
            base.setdefault("policy", {}).setdefault("budget", {})["payment_units"] = budget_units
        return load_spec(base)
    except SpecError as exc:
        raise UserError(f"the agent spec is not valid: {exc}", "fix the flags or the --spec file and retry") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{spec_file} is not JSON: {exc}") from None


@agents.command("create")
@click.argument("name")
@click.option("--tools", default="", help="Comma-separated tools: rpc (EVM), sql, ipfs, http.")
@click.option("--budget", help="Most one job may cost, in token units (the policy's payment budget).")
@click.option("--model", "model_id", type=int, required=True, help="On-chain id of the base model the agent runs on.")
@click.option("--gateway-model", help="Model name as the serving gateway lists it (default: the spec template's).")
@click.option("--system", help="System prompt.")
@click.option("--max-steps", type=click.IntRange(1, 1000), help="Most planner steps per job.")
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from a full spec file (e.g. a rules workflow); the flags above override its fields.")
@click.option("--price", help="List price per 1,000 tokens in token units (default: the base model's).")
@click.option("--share", "share_bps", type=click.IntRange(0, 5_000), default=0, show_default=True,
              help="Owner's revenue share of every payment, in basis points.")
@click.option("--raw", is_flag=True, help="--budget and --price are in base units.")
@signer_options
@pass_ctx
@example("""
nodeai agents create treasury-bot --tools=rpc,sql,ipfs --budget=50 --model 1
nodeai agents create rebalancer --spec rebalancer.json --model 1 --json
""")
def create(obj: CliContext, name: str, tools: str, budget: str | None, model_id: int, gateway_model: str | None,
           system: str | None, max_steps: int | None, spec_file: Path | None, price: str | None, share_bps: int,
           raw: bool) -> None:  # fmt: skip
    """Write the agent's spec, pin it to IPFS and register the agent on chain."""
    check_amount(budget, "budget")
    check_amount(price, "price")
    registry = obj.contract("ModelRegistry")
    base = registry.functions.models(model_id).call()
    owner, kind, deprecated = base[0], base[1], base[6]
    if owner == ZERO_ADDRESS or kind != 0:
        raise UserError(f"model {model_id} is not a registered model", "see `nodeai models list` for the ids")
    if deprecated:
        raise UserError(f"model {model_id} is deprecated", "pick an active model from `nodeai models list`")
    budget_units = parse_amount(budget, obj.decimals, raw, "budget") if budget is not None else None
    price_units = parse_amount(price, obj.decimals, raw, "price") if price is not None else int(base[4])
    spec = build_spec(obj, name, tools, budget_units, model_id, gateway_model, system, max_steps, spec_file)
    obj.account()
    spec_bytes = spec.to_json()
    with obj.ipfs() as store:
        spec_cid = store.add_bytes(spec_bytes)
    status(f"  pinned the spec: {spec_cid}")
    result = obj.send(registry.functions.registerAgent(spec_cid, model_id, price_units, share_bps), "registerAgent")
    agent_id = result.event("ModelRegistered")["modelId"]
    entry = {"agent_id": agent_id, "spec_cid": spec_cid, "base_model_id": model_id,
             "budget": spec.policy.budget.payment_units, "tools": [t.name for t in spec.tools]}  # fmt: skip
    _remember(obj, name, entry)
    data = {"name": name, **entry, "price_per_1k_tokens": price_units, "revenue_share_bps": share_bps,
            "spec": json.loads(spec_bytes), "tx": result.tx_hash}  # fmt: skip
    emit(obj.json, data, lambda: "\n".join([
        f"agent {name}: id {agent_id} on model {model_id}",
        f"spec      {spec_cid}",
        f"tools     {', '.join(entry['tools']) or '-'}",
        f"budget    {obj.fmt(entry['budget']) if entry['budget'] is not None else 'none'} per job",
        f"next: `nodeai agents run {name} --input \"...\"`",
    ]))  # fmt: skip


# -- run ----------------------------------------------------------------------------------------
def _job_input(agent_id: int, spec_cid: str | None, text: str) -> bytes:
    return json.dumps({"kind": AGENT_INPUT_KIND, "agent_id": agent_id, "spec_cid": spec_cid, "input": text},
                      sort_keys=True, separators=(",", ":")).encode()  # fmt: skip


def read_output(store: Any, cid: str) -> dict[str, Any]:
    """The job's output document from IPFS (verified against its CID by the store)."""
    data = store.get_bytes(cid)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"output": data.decode(errors="replace"), "transcript_cid": None}
    if isinstance(doc, dict) and "output" in doc:
        return doc
    return {"output": doc, "transcript_cid": None}


def _state_line(obj: CliContext, view: JobView) -> str:
    job = view.job
    if job.state is JobState.OPEN:
        return f"job {view.job_id} OPEN: {obj.fmt(job.max_payment)} locked, waiting for a provider (deadline {when(job.deadline)})"
    if job.state is JobState.CLAIMED:
        return f"job {view.job_id} CLAIMED by {job.provider}: running"
    if job.state is JobState.SUBMITTED:
        return f"job {view.job_id} SUBMITTED: output {view.output_cid}, charge {obj.fmt(job.charge)}, challenge window until {when(job.window_ends)}"
    if job.state is JobState.DISPUTED:
        return f"job {view.job_id} DISPUTED: arbitration until {when(job.window_ends)}"
    if job.state is JobState.SETTLED:
        return f"job {view.job_id} SETTLED"
    return f"job {view.job_id} REFUNDED ({view.refund['reason'].lower() if view.refund else ''})"


@agents.command("run")
@click.argument("name")
@click.option("--input", "input_text", help="The task for the agent.")
@click.option("--input-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Read the task from a file.")
@click.option("--max-payment", help="Most the job may cost, in token units (default: the agent's budget).")
@click.option("--deadline", "deadline_text", default="1h", show_default=True, help="Time the provider has: 90s, 30m, 2h, 1d.")
@click.option("--until", type=click.Choice(["created", "submitted", "settled"]), default="settled", show_default=True,
              help="Follow the job until this point (settled waits out the challenge window; created needs an "
                   "IPFS node that stays up, --ipfs-api, since the embedded one stops with the command).")
@click.option("--timeout", "timeout_text", default="2h", show_default=True, help="Stop following after this long.")
@click.option("--raw", is_flag=True, help="--max-payment is in base units.")
@signer_options
@pass_ctx
@example("""
nodeai agents run treasury-bot --input "Rebalance to 60/40"
nodeai agents run 7 --input-file task.txt --max-payment 5 --until submitted --json
""")
def run(obj: CliContext, name: str, input_text: str | None, input_file: Path | None, max_payment: str | None,
        deadline_text: str, until: str, timeout_text: str, raw: bool) -> None:  # fmt: skip
    """Run an agent as an escrowed job and follow it live until it is settled.

    Prints each state as it happens, then the result, the transcript CID and
    the settlement receipt. The job lives on chain: interrupting the command
    does not cancel it (see `nodeai jobs show ID`).
    """
    if (input_text is None) == (input_file is None):
        raise UserError("give the task with exactly one of --input or --input-file")
    text = input_text if input_text is not None else input_file.read_text()  # type: ignore[union-attr]
    deadline_s, timeout_s = parse_duration(deadline_text), parse_duration(timeout_text)
    check_amount(max_payment, "max payment")
    if until == "created" and not obj.settings.ipfs_api:
        # NOTE: the embedded IPFS node lives only as long as this command, and with --until created that ends
        # right after createJob: the input pinned on it is gone before a provider can fetch it.
        if not obj.settings.ipfs_peer_list():
            raise UserError("--until created with the embedded IPFS node: the node (the only copy of the job's input) "
                            "stops when this command returns, right after createJob, so no provider could fetch the "
                            "input and the job would only time out",
                            "follow the job until a provider has it (--until submitted, or the default), or pin on a "
                            "node that stays up: --ipfs-api URL (NODEAI_IPFS_API)")  # fmt: skip
        status("  warning: --until created with the embedded IPFS node: it stops when this command returns, so the "
               "input reaches a provider only if a peer of --ipfs-peers fetches it before then; use --until "
               "submitted or --ipfs-api URL to be sure")  # fmt: skip
    agent_id, entry = resolve_agent(obj, name)
    registry = obj.contract("ModelRegistry")
    info = registry.functions.models(agent_id).call()
    if info[0] == ZERO_ADDRESS or info[1] != 1:
        raise UserError(f"{agent_id} is not a registered agent", "see `nodeai agents list`")
    spec_cid = entry.get("spec_cid") or registry.functions.artifactCid(agent_id).call()
    if max_payment is not None:
        amount = parse_amount(max_payment, obj.decimals, raw, "max payment")
    elif entry.get("budget"):
        amount = int(entry["budget"])
    else:
        raise UserError(f"agent {name} has no budget recorded here", "pass --max-payment AMOUNT")
    if amount <= 0:
        raise UserError("the max payment must be positive")

    market = obj.contract("JobMarket")
    obj.account()
    # NOTE: the IPFS node stays up while the job runs: the provider fetches the input (and the spec
    # pinned by `agents create`) from it, and it fetches the output from the provider.
    with obj.ipfs() as store:
        input_cid = store.add_bytes(_job_input(agent_id, spec_cid, text))
        status(f"  pinned the input: {input_cid}")
        obj.ensure_allowance(market, amount)
        deadline = obj.now() + deadline_s
        created = obj.send(market.functions.createJob(agent_id, input_cid, amount, deadline, ZERO_ADDRESS, 0), "createJob")
        job_id = created.event("JobCreated")["jobId"]
        data: dict[str, Any] = {"job_id": job_id, "agent_id": agent_id, "input_cid": input_cid, "max_payment": amount,
                                "deadline": deadline, "create_tx": created.tx_hash}  # fmt: skip
        if until == "created":
            data["state"] = "OPEN"
            emit(obj.json, data, f"job {job_id} created; follow it with `nodeai jobs show {job_id}`")
            return

        started = time.monotonic()
        say = (lambda view: None) if obj.json else (lambda view: status(_state_line(obj, view)))
        view = follow(obj, job_id, lambda v: v.state not in (JobState.OPEN, JobState.CLAIMED), say, timeout_s)
        if view.state is JobState.SUBMITTED or view.output_cid:
            data["result"] = read_output(store, view.output_cid)  # type: ignore[arg-type]
            data["output_cid"] = view.output_cid
            if not obj.json:
                _print_result(data["result"], view)
    if until == "settled" and not view.state.is_final:
        view = _wait_settled(obj, view, timeout_s - (time.monotonic() - started), say)
    data |= {"state": view.state.name, "charge": view.job.charge, "provider": view.job.provider,
             "settlement": view.settlement, "refund": view.refund}  # fmt: skip
    data["transcript_cid"] = (data.get("result") or {}).get("transcript_cid")
    emit(obj.json, data, lambda: _receipt_text(obj, view, data))


def _print_result(result: dict[str, Any], view: JobView) -> None:
    output = result.get("output")
    click.echo("result:")
    click.echo("  " + (output if isinstance(output, str) else json.dumps(output, indent=2)).replace("\n", "\n  "))
    if result.get("status") not in (None, "ok", "succeeded"):
        click.echo(f"status: {result.get('status')} ({result.get('reason')})")
    click.echo(f"transcript: {result.get('transcript_cid') or 'not published by the provider'}")


def _wait_settled(obj: CliContext, view: JobView, budget: float, say: Any) -> JobView:
    """Wait out the challenge window, then finalize (anyone may) unless someone already did."""
    deadline = time.monotonic() + max(budget, 0)
    announced = 0.0
    while not view.state.is_final:
        if time.monotonic() > deadline:
            raise CliError(f"job {view.job_id} is still {view.state.name} when following timed out",
                           f"it settles without the CLI; check it with `nodeai jobs show {view.job_id}`")
        chain_now = obj.now()
        # NOTE: a local chain mines only on transactions, so its clock can stand still: the wall
        # clock says when to try, the dry run of finalize says whether the chain agrees.
        if max(chain_now, int(time.time())) >= view.job.window_ends:
            try:
                obj.send(obj.contract("JobMarket").functions.finalize(view.job_id, view.job.as_tuple()), "finalize")
            except ContractReverted:
                pass  # the window is not over on chain yet, or someone else finalized first
        elif not obj.json and time.monotonic() - announced > 60:
            announced = time.monotonic()
            status(f"  challenge window ends in {duration(view.job.window_ends - chain_now)}; then it settles")
        fresh = load_job(obj, view.job_id)
        if len(fresh.events) != len(view.events):
            say(fresh)
        view = fresh
        if not view.state.is_final:
            time.sleep(0.5 if view.job.window_ends - chain_now < 60 else 5)
    return view


def _receipt_text(obj: CliContext, view: JobView, data: dict[str, Any]) -> str:
    lines = [f"job {view.job_id} {view.state.name}"]
    if view.settlement:
        s = view.settlement
        lines += ["receipt:",
                  f"  charged      {obj.fmt(s['charge'])} of {obj.fmt(view.job.max_payment)} locked",
                  f"  provider     {obj.fmt(s['providerAmount'])} to {view.job.provider}",
                  f"  model owner  {obj.fmt(s['modelOwnerAmount'])} to {view.job.model_owner}",
                  f"  protocol fee {obj.fmt(s['protocolFee'])}",
                  f"  refunded     {obj.fmt(s['refund'])} to {view.job.requester}",
                  f"  tx           {s['tx']}"]  # fmt: skip
    elif view.refund:
        lines.append(f"refunded {obj.fmt(view.refund['refund'])} ({view.refund['reason'].lower()})")
    elif view.state is JobState.SUBMITTED:
        lines.append(f"settles after {when(view.job.window_ends)}: `nodeai jobs finalize {view.job_id}`")
    if data.get("transcript_cid"):
        lines.append(f"transcript   {data['transcript_cid']}")
    return "\n".join(lines)


# -- list ---------------------------------------------------------------------------------------
@agents.command("list")
@click.option("--mine", is_flag=True, help="Only agents this wallet owns.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@pass_ctx
@example("""
nodeai agents list --mine
""")
def list_agents(obj: CliContext, mine: bool, limit: int) -> None:
    """List registered agents (from the indexer), with the names created from this machine."""
    items = list(obj.indexer.pages("/agents", {"owner": obj.address if mine else None}, limit))
    names = {int(e["agent_id"]): n for n, e in _book(obj).get(str(obj.deployment.chain_id), {}).items()}
    for item in items:
        item["name"] = names.get(int(item.get("model_id") or 0))

    def human() -> str:
        if not items:
            return "no agents yet: `nodeai agents create NAME --tools=rpc,ipfs --budget=10 --model ID`"
        rows = [[a.get("model_id"), a.get("name") or "", a.get("base_model_id"), short(a.get("owner")),
                 obj.fmt(int(a.get("price_per_1k_tokens") or 0)), a.get("artifact_cid")] for a in items]  # fmt: skip
        return table(rows, ["id", "name", "model", "owner", "price/1k", "spec CID"])

    emit(obj.json, {"items": items, "count": len(items)}, human)
