"""The explorer page in headless Chromium against the real indexer on anvil.

Each test drives the page as a user would (clicks, typing, the wallet) and checks the
outcome twice where money moves: on chain with web3, and in the page, which learns of
it only through the indexer's SSE stream (never by reloading).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from nodeai.chain.jobs import Job
from nodeai.chain.marketplace import raw_cid

from .conftest import ONE, REPO_ROOT, Explorer, PageSession

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# NOTE: Playwright waits are bounded: no test hangs when the page never shows what it should.
WAIT_MS = 20_000


def tusd(base_units: int) -> str:
    """An amount as the page writes it: thousands separated, at least two decimals, e.g. 1,000.00 TUSD."""
    whole, fraction = divmod(base_units, ONE)
    decimals = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{whole:,}.{decimals} TUSD"


def _row(session: PageSession, table: str, key: str):
    return session.page.locator(f"#{table}-body tr[data-key='{key}']")


def short(address: str) -> str:
    """An address as the page abbreviates it: 0x1234…abcd."""
    return f"{address[:6]}…{address[-4:]}"


def _mark_no_reload(session: PageSession) -> None:
    session.page.evaluate("window.__sameDocument = true")


def _assert_no_reload(session: PageSession) -> None:
    assert session.page.evaluate("window.__sameDocument === true"), "the page reloaded"


def _connect(session: PageSession, explorer: Explorer) -> None:
    session.page.click("#connect")
    session.page.wait_for_selector(f"#wallet-status:has-text('{explorer.wallet.address}')", timeout=WAIT_MS)


def test_page_lists_what_the_chain_holds(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    # Models and agents: every id the registry handed out, with the kind and price the chain has.
    model_count = market.models.functions.modelCount().call()
    assert model_count == 2
    rows = page.locator("#models-body tr[data-key]")
    assert rows.count() == model_count
    model_row = _row(session, "models", str(activity.model_id))
    price = market.models.functions.models(activity.model_id).call()[4]
    assert "model" in model_row.inner_text() and tusd(price) in model_row.inner_text()
    assert "agent" in _row(session, "models", str(activity.agent_id)).inner_text()

    # Providers: stake and price as the registry holds them, and liveness from probing the endpoints.
    for address in activity.providers:
        info = market.providers.functions.providers(address).call()
        row = _row(session, "providers", address)
        row.locator(".badge", has_text="up").or_(row.locator(".badge", has_text="down")).first.wait_for(timeout=WAIT_MS)
        text = row.inner_text()
        assert tusd(info[1]) in text  # stake
        price = market.providers.functions.modelPrice(address, activity.model_id).call()
        assert f"#{activity.model_id}: {tusd(price)}" in text
    assert "up ·" in _row(session, "providers", activity.live_provider).inner_text()
    assert "down" in _row(session, "providers", activity.dead_provider).inner_text()

    # Jobs: every job the market created, in its current state.
    assert page.locator("#jobs-body tr[data-key]").count() == market.market.functions.jobCount().call()
    assert "CLAIMED" in _row(session, "jobs", str(activity.claimed_job_id)).inner_text()
    assert "OPEN" in _row(session, "jobs", str(activity.job_ids[0])).inner_text()

    # Receipts: the committed batch, with its count.
    root = "0x" + activity.tree.root.hex()
    batch = _row(session, "receipts", f"{activity.live_provider}:{root}")
    assert batch.count() == 1 and "5" in batch.inner_text()


def test_job_created_from_the_page_lands_on_chain_then_in_the_live_list(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    _mark_no_reload(session)
    _connect(session, explorer)
    jobs_before = market.market.functions.jobCount().call()
    cid = raw_cid(b"a job created from the explorer")

    page.select_option("#job-model", str(activity.model_id))
    page.fill("#job-input", cid)
    page.fill("#job-max", "4.5")
    page.fill("#job-hours", "12")
    page.click("#job-submit")
    page.wait_for_selector("#job-result[data-tone=ok]", timeout=WAIT_MS)

    # On chain: a new job, the wallet's, locking 4.5 TUSD (the page approved the market first).
    assert market.market.functions.jobCount().call() == jobs_before + 1
    assert len(session.wallet.sent) == 2  # approve, then createJob
    receipt = explorer.w3.eth.get_transaction_receipt(session.wallet.sent[-1])
    (log,) = market.market.events.JobCreated().process_receipt(receipt, errors=DISCARD)  # the token logs too
    created, job_id = log["args"], log["args"]["jobId"]
    assert created["requester"] == explorer.wallet.address and created["maxPayment"] == 4_500_000
    assert created["inputCid"] == cid and created["inputHash"] == keccak(text=cid)
    assert f"Job #{job_id} created" in page.inner_text("#job-result")

    # In the page: the job arrives over the SSE stream, without a reload.
    row = _row(session, "jobs", str(job_id))
    row.wait_for(timeout=WAIT_MS)
    assert "OPEN" in row.inner_text() and tusd(4_500_000) in row.inner_text()
    _assert_no_reload(session)


def test_job_with_a_priority_provider_lands_on_chain_with_its_window(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    _mark_no_reload(session)
    _connect(session, explorer)
    # The priority field offers the registered providers (it takes any address typed in too).
    offered = page.eval_on_selector_all("#job-priority-options option", "options => options.map((o) => o.value)")
    assert sorted(offered) == sorted(activity.providers)
    # The second provider gets the window: the first (the one that claims everything else) must wait.
    priority, other = activity.dead_provider, activity.live_provider
    cid = raw_cid(b"a job with a priority provider")

    page.select_option("#job-model", str(activity.model_id))
    page.fill("#job-input", cid)
    page.fill("#job-max", "3")
    page.fill("#job-hours", "6")
    page.fill("#job-priority", priority.lower())  # any case: the page checksums it
    page.fill("#job-priority-minutes", "90")
    page.click("#job-submit")
    page.wait_for_selector("#job-result[data-tone=ok]", timeout=WAIT_MS)

    # On chain: the JobCreated event names the provider and a window ending 90 minutes after the chain's
    # clock (the deadline counts from the same block: 6 hours), and the job the contract committed to is
    # that struct: its jobCommitment is the hash of the struct rebuilt from the event.
    receipt = explorer.w3.eth.get_transaction_receipt(session.wallet.sent[-1])
    (log,) = market.market.events.JobCreated().process_receipt(receipt, errors=DISCARD)
    created, job_id = log["args"], log["args"]["jobId"]
    assert created["priorityProvider"] == priority and created["inputCid"] == cid
    assert created["deadline"] - created["priorityUntil"] == 6 * 3600 - 90 * 60
    mined_at = explorer.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert mined_at < created["priorityUntil"] <= mined_at + 90 * 60
    job = Job.from_created(created)
    assert market.market.functions.jobCommitment(job_id).call() == job.commitment()
    # ... and the contract enforces it: inside the window only the priority provider may claim.
    with pytest.raises(ContractLogicError, match="inside the priority provider's window"):
        market.market.functions.claimJob(job_id, job.as_tuple()).call({"from": other})
    market.market.functions.claimJob(job_id, job.as_tuple()).call({"from": priority})  # would succeed
    assert f"Only {priority} may claim it until" in page.inner_text("#job-result")

    # In the page: the job arrives over the stream with its priority provider and window.
    row = _row(session, "jobs", str(job_id))
    row.wait_for(timeout=WAIT_MS)
    shown = row.locator(".priority")
    assert shown.get_attribute("data-priority-provider") == priority
    assert shown.get_attribute("data-priority-until") == str(created["priorityUntil"])
    assert short(priority) in shown.inner_text() and "until" in shown.inner_text()
    # Jobs without one show none.
    assert _row(session, "jobs", str(activity.job_ids[0])).locator(".priority").count() == 0
    _assert_no_reload(session)


def test_priority_fields_get_clear_messages_and_send_nothing(session: PageSession, explorer: Explorer) -> None:
    page, activity = session.page, explorer.activity
    _connect(session, explorer)
    page.fill("#job-input", raw_cid(b"valid input"))
    page.fill("#job-max", "1")
    page.fill("#job-hours", "2")

    def refused(provider: str, minutes: str, message: str) -> None:
        page.fill("#job-priority", provider)
        page.fill("#job-priority-minutes", minutes)
        page.evaluate("document.getElementById('job-result').removeAttribute('data-tone')")
        page.click("#job-submit")
        page.wait_for_selector("#job-result[data-tone=bad]", timeout=WAIT_MS)
        assert message in page.inner_text("#job-result")

    provider = activity.live_provider
    refused("0x123", "30", 'The priority provider "0x123" is not an address')
    refused("0x" + provider[2:].swapcase(), "30", "wrong checksum")
    refused("0x" + "00" * 20, "30", "The zero address cannot be a priority provider")
    refused(provider, "", "Give the priority window")
    refused(provider, "half an hour", 'whole number of minutes, e.g. 30 (got "half an hour")')
    refused(provider, "0", "at least 1 minute")
    refused(provider, "121", "The priority window (121 minutes) ends after the job's deadline (2 hours, 120 minutes from now)")
    refused("", "30", "A priority window needs a priority provider")
    stranger = Account.create().address
    refused(stranger, "30", f"{stranger} is not a registered provider")
    assert session.wallet.sent == []


def test_bad_input_gets_a_clear_message_and_sends_nothing(session: PageSession, explorer: Explorer) -> None:
    page = session.page
    _connect(session, explorer)
    page.fill("#job-input", raw_cid(b"valid input"))
    page.fill("#job-max", "five")
    page.click("#job-submit")
    page.wait_for_selector("#job-result[data-tone=bad]", timeout=WAIT_MS)
    assert 'must be a positive number, e.g. 5 or 2.5 (got "five")' in page.inner_text("#job-result")
    page.fill("#job-max", "1")
    page.fill("#job-input", "short")
    page.click("#job-submit")
    page.wait_for_selector("#job-result:has-text('10 to 100 characters (got 5)')", timeout=WAIT_MS)
    page.fill("#deposit-amount", "1.0000001")  # the token has 6 decimals
    page.click("#deposit-submit")
    page.wait_for_selector("#deposit-result:has-text('more than 6 decimals')", timeout=WAIT_MS)
    page.fill("#balance-address", "0x123")
    page.click("#balance-form button[type=submit]")
    page.wait_for_selector("#balance-result:has-text('is not an address')", timeout=WAIT_MS)
    assert session.wallet.sent == []


def test_job_changes_made_elsewhere_stream_into_the_page(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    _mark_no_reload(session)
    job_id, _ = market.create_job(activity.model_id, b"created by a script", 2 * ONE)
    row = _row(session, "jobs", str(job_id))
    row.wait_for(timeout=WAIT_MS)
    assert "OPEN" in row.inner_text()
    market.claim(job_id)
    page.wait_for_selector(f"#jobs-body tr[data-key='{job_id}'] .badge:has-text('CLAIMED')", timeout=WAIT_MS)
    assert activity.live_provider[:6] in row.inner_text()
    _assert_no_reload(session)


def test_deposit_from_the_page_shows_in_the_escrow_balance(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    _mark_no_reload(session)
    _connect(session, explorer)
    payer, provider = explorer.wallet.address, activity.live_provider
    assert page.input_value("#balance-address") == payer  # the connected wallet's balances are shown
    before = market.escrow.functions.channels(payer, provider).call()[0]

    page.select_option("#deposit-provider", provider)
    page.fill("#deposit-amount", "2.5")
    page.click("#deposit-submit")
    page.wait_for_selector("#deposit-result[data-tone=ok]", timeout=WAIT_MS)

    after = market.escrow.functions.channels(payer, provider).call()[0]
    assert after == before + 2_500_000
    expected = tusd(after)
    page.wait_for_selector(f"#channels-body tr[data-key='{payer}:{provider}'] strong:has-text('{expected}')",
                           timeout=WAIT_MS)  # fmt: skip
    _assert_no_reload(session)


def test_withdraw_from_the_page_after_the_timelock(session: PageSession, explorer: Explorer) -> None:
    page, market, activity = session.page, explorer.market, explorer.activity
    escrow = market.escrow.functions
    _mark_no_reload(session)
    _connect(session, explorer)
    # A channel of its own (the deposit test uses the other provider's).
    payer, provider = explorer.wallet.address, activity.dead_provider

    def on_chain_total() -> int:
        return sum(escrow.channels(payer, p).call()[0] for p in activity.providers)

    page.select_option("#deposit-provider", provider)
    page.fill("#deposit-amount", "1.5")
    page.click("#deposit-submit")
    page.wait_for_selector("#deposit-result[data-tone=ok]", timeout=WAIT_MS)
    balance = escrow.channels(payer, provider).call()[0]
    assert balance >= 1_500_000
    # The wallet's escrow balance follows the deposit (the indexer's stream, no reload).
    total = on_chain_total()
    page.wait_for_selector(f"#wallet-escrow[data-total='{total}']", timeout=WAIT_MS)
    assert tusd(total) in page.inner_text("#wallet-escrow")

    page.select_option("#withdraw-provider", provider)
    page.wait_for_selector("#withdraw-status[data-state=none]", timeout=WAIT_MS)
    sent = len(session.wallet.sent)
    # Withdrawing before requesting: the page says what to do and sends nothing.
    page.click("#withdraw-submit")
    page.wait_for_selector("#withdraw-result:has-text('Request the withdrawal first')", timeout=WAIT_MS)
    assert "1 day after the request" in page.inner_text("#withdraw-result")

    # Step 1: the request starts the timelock on chain; the page shows it pending, and until when.
    page.click("#withdraw-request")
    page.wait_for_selector("#withdraw-result[data-tone=ok]", timeout=WAIT_MS)
    assert len(session.wallet.sent) == sent + 1
    requested = explorer.w3.eth.get_transaction_receipt(session.wallet.sent[-1])
    timelock = escrow.withdrawTimelock().call()
    unlock_at = escrow.channels(payer, provider).call()[1]
    assert unlock_at == explorer.w3.eth.get_block(requested["blockNumber"])["timestamp"] + timelock
    page.wait_for_selector(f"#withdraw-status[data-state=pending][data-unlock-at='{unlock_at}']", timeout=WAIT_MS)
    assert "can be completed at" in page.inner_text("#withdraw-status")
    page.wait_for_selector(f"#channels-body tr[data-key='{payer}:{provider}']:has-text('unlocks')", timeout=WAIT_MS)
    page.wait_for_selector("#wallet-escrow:has-text('1 withdrawal(s) requested')", timeout=WAIT_MS)

    # Too early: refused with the time it unlocks, nothing sent.
    page.click("#withdraw-submit")
    page.wait_for_selector("#withdraw-result:has-text('Not yet')", timeout=WAIT_MS)
    assert len(session.wallet.sent) == sent + 1

    # Step 2, once the chain's clock passed the unlock time: the page notices by itself.
    market.advance_time(timelock)
    page.wait_for_selector("#withdraw-status[data-state=ready]", timeout=WAIT_MS)
    tokens_before = market.balance(payer)
    page.click("#withdraw-submit")
    page.wait_for_selector("#withdraw-result[data-tone=ok]:has-text('Withdrew')", timeout=WAIT_MS)
    assert tuple(escrow.channels(payer, provider).call()) == (0, 0)
    assert market.balance(payer) == tokens_before + balance
    assert tusd(balance) in page.inner_text("#withdraw-result")
    # The page: the wallet's escrow balance and the channel's row, from the stream.
    page.wait_for_selector(f"#wallet-escrow[data-total='{total - balance}']", timeout=WAIT_MS)
    assert tusd(total - balance) in page.inner_text("#wallet-escrow")
    page.wait_for_selector(f"#channels-body tr[data-key='{payer}:{provider}'] strong:has-text('{tusd(0)}')",
                           timeout=WAIT_MS)  # fmt: skip
    assert tusd(balance) in _row(session, "channels", f"{payer}:{provider}").inner_text()  # withdrawn
    _assert_no_reload(session)


def _receipt_json(explorer: Explorer, index: int, **changes: object) -> str:
    receipt = explorer.activity.receipts[index]
    body = {
        "requestHash": "0x" + receipt.request_hash.hex(), "provider": receipt.provider, "payer": receipt.payer,
        "modelId": receipt.model_id, "tokensIn": receipt.tokens_in, "tokensOut": receipt.tokens_out,
        "latencyMs": receipt.latency_ms, "amount": str(receipt.amount), "timestamp": receipt.timestamp,
    }  # fmt: skip
    body.update(changes)
    return json.dumps(body, indent=2)


def _check(session: PageSession, receipt: str, root: str, proof: list[bytes]) -> str:
    page = session.page
    page.fill("#verify-receipt", receipt)
    page.fill("#verify-root", root)
    page.fill("#verify-proof", "\n".join("0x" + p.hex() for p in proof))
    page.evaluate("document.getElementById('verify-result').removeAttribute('data-verdict')")
    page.click("#verify-submit")
    page.wait_for_selector("#verify-result[data-verdict]", timeout=WAIT_MS)
    return page.get_attribute("#verify-result", "data-verdict") or ""


def test_receipt_inclusion_check_against_the_on_chain_root(session: PageSession, explorer: Explorer) -> None:
    activity, market = explorer.activity, explorer.market
    tree, index = activity.tree, 2
    root, proof = "0x" + tree.root.hex(), tree.proof(index)
    assert market.verify_receipt(tree, activity.receipts, index)  # the contract's own answer, for reference

    assert _check(session, _receipt_json(explorer, index), root, proof) == "valid"
    assert "Valid" in session.page.inner_text("#verify-result")

    tampered = _receipt_json(explorer, index, amount="4000")  # billed 40, claims 4,000
    assert _check(session, tampered, root, proof) == "invalid"
    assert "altered" in session.page.inner_text("#verify-result")

    never_committed = "0x" + keccak(text="a root nobody committed").hex()
    assert _check(session, _receipt_json(explorer, index), never_committed, proof) == "invalid"
    assert "never committed" in session.page.inner_text("#verify-result")

    assert _check(session, "{not json", root, proof) == "error"
    assert "not valid JSON" in session.page.inner_text("#verify-result")


def test_usable_at_a_phone_width(phone: PageSession, explorer: Explorer) -> None:
    page = phone.page
    assert page.viewport_size == {"width": 375, "height": 812}
    _row(phone, "jobs", str(explorer.activity.job_ids[0])).wait_for(timeout=WAIT_MS)
    # Connected, so every form is enabled and the wallet's escrow and withdrawal state are shown too.
    _connect(phone, explorer)
    page.wait_for_selector("#wallet-escrow:has-text('in the escrow')", timeout=WAIT_MS)
    page.wait_for_selector("#withdraw-status[data-state]", timeout=WAIT_MS)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 375 px screen"
    # Every visible element is inside the screen (the table headers, kept for screen readers, are
    # clipped to 1 px on phones, where each cell carries its own label).
    beyond = page.evaluate("""[...document.querySelectorAll('body *')]
        .filter((e) => e.getClientRects().length && !e.closest('thead, .visually-hidden, .skip-link'))
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5)
        .map((e) => `${e.tagName}#${e.id}.${e.className}: ${e.getBoundingClientRect().right}`)""")
    assert beyond == []
    assert "Job" in page.locator("#jobs-body tr[data-key] td").first.evaluate("e => getComputedStyle(e, '::before').content")


CONTRAST_SCRIPT = """() => {
  const channels = (color) => color.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => {
    const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  const background = (e) => {
    for (; e; e = e.parentElement) {
      const c = channels(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const e of document.querySelectorAll('body *')) {
    const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !e.getClientRects().length || e.closest('.visually-hidden, thead, [disabled], .skip-link')) continue;
    const fg = luminance(channels(getComputedStyle(e).color)), bg = luminance(background(e));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    if (ratio < 4.5) worst.push(`${e.tagName}.${e.className} "${e.textContent.trim().slice(0, 30)}": ${ratio.toFixed(2)}`);
  }
  return worst;
}"""


def test_accessible_basics(session: PageSession, explorer: Explorer) -> None:
    page = session.page
    _row(session, "providers", explorer.activity.live_provider).locator(".badge", has_text="up").wait_for(timeout=WAIT_MS)
    # Landmarks and headings a screen reader navigates by.
    assert page.locator("header").count() == 1 and page.locator("main").count() == 1
    assert page.locator("nav[aria-label]").count() == 1 and page.locator("h1").count() == 1
    assert page.locator("main section h2").count() == 5
    # Every form control has a label; every table has a caption and column headers.
    unlabelled = page.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id)""")
    assert unlabelled == []
    assert page.evaluate("[...document.querySelectorAll('table')].every((t) => t.caption && t.tHead)")
    # Text is readable: WCAG AA contrast (4.5:1) for every visible text on its background.
    assert page.evaluate(CONTRAST_SCRIPT) == []


def test_screenshot_for_the_docs(session: PageSession, explorer: Explorer, tmp_path: Path) -> None:
    page, activity = session.page, explorer.activity
    _row(session, "providers", activity.live_provider).locator(".badge", has_text="up").wait_for(timeout=WAIT_MS)
    # A connected wallet shows its escrow balances; a checked receipt shows the verdict.
    _connect(session, explorer)
    page.wait_for_selector("#balance-result:has-text('in escrow in all')", timeout=WAIT_MS)
    tree = activity.tree
    assert _check(session, _receipt_json(explorer, 0), "0x" + tree.root.hex(), tree.proof(0)) == "valid"
    page.wait_for_selector("#wallet-escrow:has-text('in the escrow')", timeout=WAIT_MS)
    page.wait_for_selector("#withdraw-status[data-state]", timeout=WAIT_MS)
    shot = tmp_path / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # NOTE: docs/img/explorer.png is refreshed only on request, so test runs leave the tree clean.
    if os.environ.get("NODEAI_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO_ROOT / "docs" / "img" / "explorer.png")

