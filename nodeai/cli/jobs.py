"""``nodeai jobs list|show|dispute|refund|finalize``: agent jobs escrowed in the JobMarket.

``list`` reads the indexer (the chain cannot list "my jobs" without
scanning everything); ``show`` and every transaction read the job from the
chain itself (``chainview``), so what is signed matches the job's commitment.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from nodeai.chain.jobs import JobState
from nodeai.cli.chainview import JobView, load_job
from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import UserError
from nodeai.cli.output import duration, emit, short, table, when

STATES = [s.name for s in JobState]


@click.group("jobs")
@example("""
nodeai jobs list --mine
nodeai jobs show 12
nodeai jobs dispute 12 --reason "wrong answer"
""")
def jobs() -> None:
    """Agent jobs: list, inspect, dispute, refund, finalize."""


@jobs.command("list")
@click.option("--mine", is_flag=True, help="Only jobs this wallet requested.")
@click.option("--requester", help="Only jobs of this requester address.")
@click.option("--provider", help="Only jobs claimed by this provider address.")
@click.option("--state", type=click.Choice(STATES, case_sensitive=False), help="Only jobs in this state.")
@click.option("--model", "model_id", type=int, help="Only jobs for this model or agent id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="At most this many jobs.")
@pass_ctx
@example("""
nodeai jobs list --mine --state SUBMITTED
nodeai jobs list --provider 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 --json
""")
def list_jobs(obj: CliContext, mine: bool, requester: str | None, provider: str | None, state: str | None,
              model_id: int | None, limit: int) -> None:  # fmt: skip
    """List jobs from the indexer, oldest first."""
    if mine and requester:
        raise UserError("--mine and --requester both name the requester", "give one of them")
    params = {"requester": obj.address if mine else requester, "provider": provider,
              "state": state.upper() if state else None, "model_id": model_id}  # fmt: skip
    items = list(obj.indexer.pages("/jobs", params, limit))

    def human() -> str:
        if not items:
            return "no jobs match"
        rows = [[j.get("job_id"), j.get("state"), j.get("model_id"), _amount(obj, j.get("max_payment")),
                 _amount(obj, j.get("charge")) if j.get("state") in ("SUBMITTED", "DISPUTED", "SETTLED") else "-",
                 short(j.get("requester")), short(j.get("provider")), when(j.get("deadline")), j.get("status")]
                for j in items]  # fmt: skip
        return table(rows, ["job", "state", "model", "max payment", "charge", "requester", "provider", "deadline", "status"])

    emit(obj.json, {"items": items, "count": len(items)}, human)


def _amount(obj: CliContext, value: int | None) -> str:
    return "-" if value is None else obj.fmt(int(value))


@jobs.command("show")
@click.argument("job_id", type=int)
@pass_ctx
@example("""
nodeai jobs show 12
nodeai jobs show 12 --json | jq .state
""")
def show(obj: CliContext, job_id: int) -> None:
    """Show one job as the chain holds it: state, amounts, CIDs, settlement and its events."""
    view = load_job(obj, job_id)
    now = obj.now()
    data = view.as_json() | {"next": next_step(obj, view, now)}
    emit(obj.json, data, lambda: render_job(obj, view, now))


def next_step(obj: CliContext, view: JobView, now: int) -> str:
    """What can be done with the job now, as a command to type."""
    job, jid = view.job, view.job_id
    if job.state is JobState.OPEN:
        return (f"refund it: `nodeai jobs refund {jid}`" if now >= job.deadline
                else f"waiting for a provider to claim it (deadline {when(job.deadline)}); cancel: `nodeai jobs refund {jid}`")  # fmt: skip
    if job.state is JobState.CLAIMED:
        return (f"the provider missed the deadline: `nodeai jobs refund {jid}` (its bond is slashed to you)"
                if now >= job.deadline else f"running on {job.provider}; result due by {when(job.deadline)}")  # fmt: skip
    if job.state is JobState.SUBMITTED:
        if now >= job.window_ends:
            return f"challenge window over: `nodeai jobs finalize {jid}` pays the provider"
        return (f"challenge window open for {duration(job.window_ends - now)}: dispute with "
                f"`nodeai jobs dispute {jid} --reason TEXT`, or let it settle")  # fmt: skip
    if job.state is JobState.DISPUTED:
        return (f"arbitration over without a ruling: `nodeai jobs finalize {jid}`" if now >= job.window_ends
                else f"waiting for the arbiter (until {when(job.window_ends)})")  # fmt: skip
    return "settled" if job.state is JobState.SETTLED else "refunded"


def render_job(obj: CliContext, view: JobView, now: int) -> str:
    job = view.job
    lines = [
        f"job {view.job_id}  {job.state.name}",
        f"  model        {job.model_id}",
        f"  requester    {job.requester}",
        f"  provider     {job.provider if job.state is not JobState.OPEN else '-'}",
        f"  max payment  {obj.fmt(job.max_payment)}",
        f"  deadline     {when(job.deadline)}",
        f"  input        {view.input_cid}",
    ]
    if view.output_cid:
        lines += [f"  output       {view.output_cid}", f"  charge       {obj.fmt(job.charge)}  (usage {view.usage})",
                  f"  window ends  {when(job.window_ends)}"]  # fmt: skip
    if view.settlement:
        s = view.settlement
        lines.append(f"  settled      provider {obj.fmt(s['providerAmount'])}, model owner {obj.fmt(s['modelOwnerAmount'])}, "
                     f"fee {obj.fmt(s['protocolFee'])}, refunded {obj.fmt(s['refund'])}")  # fmt: skip
    if view.refund:
        r = view.refund
        lines.append(f"  refunded     {obj.fmt(r['refund'])} ({r['reason'].lower().replace('_', ' ')}; slashed {obj.fmt(r['slashed'])})")
    lines.append("  events       " + ", ".join(f"{e['event']}@{e['block']}" for e in view.events))
    lines.append(f"next: {next_step(obj, view, now)}")
    return "\n".join(lines)


def _pin_reason(obj: CliContext, job_id: int, reason: str) -> str:
    document = json.dumps({"type": "nodeai.dispute", "job_id": job_id, "by": obj.account().address, "reason": reason},
                          sort_keys=True).encode()  # fmt: skip
    with obj.ipfs() as store:
        return store.add_bytes(document)


@jobs.command("dispute")
@click.argument("job_id", type=int)
@click.option("--reason", help="Why the result is wrong (pinned to IPFS as the dispute's evidence).")
@click.option("--reason-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the reason from this file.")
@click.option("--reason-cid", help="CID of evidence already pinned to IPFS.")
@signer_options
@pass_ctx
@example("""
nodeai jobs dispute 12 --reason "output ignores the 60/40 target"
nodeai jobs dispute 12 --reason-cid bafkreib... --password-file ~/.nodeai/pw
""")
def dispute(obj: CliContext, job_id: int, reason: str | None, reason_file: Path | None, reason_cid: str | None) -> None:
    """Dispute a submitted result inside its challenge window (requester only); an arbiter then rules."""
    given = [x for x in (reason, reason_file, reason_cid) if x is not None]
    if len(given) != 1:
        raise UserError("give exactly one of --reason, --reason-file, --reason-cid")
    view = load_job(obj, job_id)
    now = obj.now()
    me = obj.address
    if view.state is not JobState.SUBMITTED:
        raise UserError(f"job {job_id} is {view.state.name}; only a SUBMITTED job can be disputed",
                        next_step(obj, view, now))
    if view.job.requester != me:
        raise UserError(f"job {job_id} was requested by {view.job.requester}, not by this wallet ({me})",
                        "only the requester can dispute; switch wallets with --keystore")
    if now >= view.job.window_ends:
        raise UserError(f"the challenge window of job {job_id} closed at {when(view.job.window_ends)}", next_step(obj, view, now))
    if reason_file is not None:
        reason = reason_file.read_text()
    cid = reason_cid or _pin_reason(obj, job_id, reason or "")
    market = obj.contract("JobMarket")
    result = obj.send(market.functions.disputeJob(job_id, view.job.as_tuple(), cid), "disputeJob")
    event = result.event("JobDisputed")
    data = {"job_id": job_id, "state": "DISPUTED", "reason_cid": cid, "arbitration_ends": event["arbitrationEnds"],
            "tx": result.tx_hash}  # fmt: skip
    emit(obj.json, data, f"disputed job {job_id} (evidence {cid}); the arbiter rules by {when(event['arbitrationEnds'])}")


@jobs.command("refund")
@click.argument("job_id", type=int)
@signer_options
@pass_ctx
@example("""
nodeai jobs refund 12          # cancels an unclaimed job, or refunds one past its deadline
""")
def refund(obj: CliContext, job_id: int) -> None:
    """Get the escrowed payment of a job back.

    An OPEN job before its deadline is cancelled (requester only). An OPEN or
    CLAIMED job past its deadline is refunded as expired (anyone may call; a
    provider that claimed and missed the deadline loses its bond to the requester).
    """
    view = load_job(obj, job_id)
    now = obj.now()
    job = view.job
    market = obj.contract("JobMarket")
    if job.state in (JobState.OPEN, JobState.CLAIMED) and now >= job.deadline:
        fn, label, how = market.functions.refundExpired(job_id, job.as_tuple()), "refundExpired", "expired"
    elif job.state is JobState.OPEN:
        if job.requester != obj.address:
            raise UserError(f"job {job_id} is open until {when(job.deadline)} and belongs to {job.requester}",
                            "only its requester can cancel it before the deadline; anyone can refund it after")
        fn, label, how = market.functions.cancelJob(job_id, job.as_tuple()), "cancelJob", "cancelled"
    else:
        raise UserError(f"job {job_id} is {job.state.name} and cannot be refunded now", next_step(obj, view, now))
    result = obj.send(fn, label)
    event = result.event("JobRefunded")
    data = {"job_id": job_id, "state": "REFUNDED", "how": how, "refund": event["refund"], "slashed": event["slashed"],
            "requester": job.requester, "tx": result.tx_hash}  # fmt: skip
    emit(obj.json, data, f"job {job_id} {how}: {obj.fmt(event['refund'])} refunded to {job.requester}"
         + (f", provider bond slashed {obj.fmt(event['slashed'])}" if event["slashed"] else ""))


@jobs.command("finalize")
@click.argument("job_id", type=int)
@signer_options
@pass_ctx
@example("""
nodeai jobs finalize 12        # after the challenge window: pays the provider, refunds the rest
""")
def finalize(obj: CliContext, job_id: int) -> None:
    """Settle a job whose challenge (or arbitration) window is over; anyone may call it."""
    view = load_job(obj, job_id)
    data = finalize_job(obj, view)
    emit(obj.json, data, lambda: f"job {job_id} settled: provider {obj.fmt(data['provider_amount'])}, "
         f"model owner {obj.fmt(data['model_owner_amount'])}, fee {obj.fmt(data['protocol_fee'])}, "
         f"refunded {obj.fmt(data['refund'])}")  # fmt: skip


def finalize_job(obj: CliContext, view: JobView) -> dict[str, object]:
    now = obj.now()
    if view.state not in (JobState.SUBMITTED, JobState.DISPUTED) or now < view.job.window_ends:
        raise UserError(f"job {view.job_id} cannot be finalized now ({view.state.name})", next_step(obj, view, now))
    market = obj.contract("JobMarket")
    result = obj.send(market.functions.finalize(view.job_id, view.job.as_tuple()), "finalize")
    s = result.event("JobSettled")
    return {"job_id": view.job_id, "state": "SETTLED", "charge": s["charge"], "provider_amount": s["providerAmount"],
            "model_owner_amount": s["modelOwnerAmount"], "protocol_fee": s["protocolFee"], "refund": s["refund"],
            "tx": result.tx_hash}  # fmt: skip
